"""The Ray Train entry point of distillation: one data-parallel worker of a ``TorchTrainer``.

Each worker builds the student, reads every training row (the rows are small: token ids and a
top-k per position), takes its share of each global batch, and trains with DDP (gloo on CPU,
NCCL on GPU) through ``ray.train.torch.prepare_model``, or with DeepSpeed ZeRO-2
(``strategy="deepspeed"``, ``actors/trainers/zero.py``) over the same process group. Worker 0
evaluates and writes the weights; Ray Train persists the checkpoints (with ZeRO, every worker's
optimizer partition merged in) to the run's ``storage_path`` and hands the latest back through
``ray.train.get_checkpoint()`` when a run of the same name is started again (resume).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from actors.trainers.data import read_rows
from actors.trainers.distill import Distiller, TrainConfig, train
from actors.trainers.students import StudentConfig, build_student


def train_loop_per_worker(config: dict) -> None:
    """Run on every Ray Train worker.

    Args:
        config: ``train`` (:class:`TrainConfig`), ``student`` (:class:`StudentConfig`),
            ``verifier`` (the verifier's model spec), ``data`` (a pyarrow filesystem and the
            folder of the training rows' Parquet files), ``strategy`` (``ddp`` or ``deepspeed``).
    """
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    cfg: TrainConfig = config["train"]
    student_cfg: StudentConfig = config["student"]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    student, tokenizer = build_student(student_cfg, config["verifier"])
    student.to(get_device())
    rows = read_rows(*config["data"])
    train_rows = [row for row in rows if row["split"] == "train"]
    val_rows = [row for row in rows if row["split"] == "val"]
    if config.get("strategy", "ddp") == "deepspeed":
        from actors.trainers.zero import ZeroDistiller

        distiller = ZeroDistiller(student, cfg, world)
    else:
        distiller = Distiller(student, cfg, wrap=prepare_model if world > 1 else None)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            distiller.restore(folder)
    scratch = Path(tempfile.mkdtemp(prefix="distill-"))

    def report(metrics: dict, folder: Path | None) -> None:
        if folder is None:
            ray.train.report(metrics)
            return
        name = f"checkpoint_{metrics['step']:06d}"
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)), checkpoint_dir_name=name)
        shutil.rmtree(folder, ignore_errors=True)  # persisted to storage by now

    try:
        train(
            distiller,
            train_rows,
            val_rows,
            report,
            lambda step: scratch / f"step_{step}",
            tokenizer,
            rank,
            world,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

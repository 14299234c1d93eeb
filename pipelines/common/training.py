"""Ray Train for every training job: the worker group's settings and one ``TorchTrainer`` run
whose checkpoints live in ``storage_path/name`` (a run of the same name resumes from the latest)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.common.storage import StoreConfig, resolve

STRATEGIES = ("ddp", "deepspeed")


@dataclass
class WorkersConfig:
    """The Ray Train worker group.

    Attributes:
        num_workers: data-parallel training workers.
        cpus_per_worker: CPUs each reserves (also its torch thread count unless ``train.threads``).
        use_gpu: one GPU per worker (NCCL); otherwise CPU with gloo.
        strategy: ``ddp`` (PyTorch DDP) or ``deepspeed`` (ZeRO-2: gradients and optimizer state
            partitioned over the workers; on GPUs and CPUs). A run resumes with the strategy and
            the number of workers that saved it.
    """

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError("workers.num_workers must be >= 1 and workers.cpus_per_worker > 0")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"workers.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            raise ValueError("workers.strategy=deepspeed needs the deepspeed package (pip install deepspeed)")


def fit(
    loop: Callable[[dict], None],
    loop_config: dict,
    workers: WorkersConfig,
    name: str,
    storage_path: str,
    store: StoreConfig,
    keep: int = 2,
):
    """Run ``loop`` on every worker of a ``TorchTrainer``; the result, which must hold a checkpoint.

    Args:
        loop: ``train_loop_per_worker``.
        loop_config: its argument.
        workers: the worker group.
        name: the run's name: its folder in ``storage_path`` (the same name resumes).
        storage_path: local folder or ``s3://`` URI of the run's checkpoints.
        store: object-store settings for ``s3://``.
        keep: checkpoints kept.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fs, root = resolve(storage_path, store)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if workers.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers.num_workers,
            use_gpu=workers.use_gpu,
            resources_per_worker={"CPU": workers.cpus_per_worker} | ({"GPU": 1} if workers.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=root,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=keep),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the run {name} in {storage_path} produced no checkpoint")
    return result

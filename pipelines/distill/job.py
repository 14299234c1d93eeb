"""The distillation job: rows from the verifier actors (Ray Data), then Ray Train, then the result
measured with the real engine, exported, and hot-swapped into live drafter actors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from actors.drafters.artifact import save_compact
from actors.engine import Engine
from actors.messages import SamplingParams
from actors.models import load_model
from actors.trainers.students import build_student, save_student
from actors.trainers.train_worker import train_loop_per_worker
from pipelines.common.training import fit as run_trainer
from pipelines.distill.config import DistillConfig
from pipelines.distill.data import data_location, load_prompts, make_rows
from pipelines.distill.report import Summary, write_metrics

log = logging.getLogger(__name__)


def main(cfg: DistillConfig) -> Summary:
    """Run the job (see the package docstring); print and return its summary."""
    import ray

    start = time.perf_counter()
    if not ray.is_initialized():
        # The cluster in RAY_ADDRESS (`ray job submit` sets it), else a fresh local Ray: never
        # attach to another local cluster by accident.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    summary = Summary()
    data_fs, data_path = data_location(cfg)
    summary.rows_written = make_rows(cfg, data_fs, data_path)
    summary.stage_seconds["rows"] = time.perf_counter() - start
    result = fit(cfg, (data_fs, data_path))
    summary.stage_seconds["train"] = time.perf_counter() - start - summary.stage_seconds["rows"]
    summary.checkpoint = result.checkpoint.path
    with tempfile.TemporaryDirectory(prefix="distill-") as scratch:
        drafter = Path(cfg.output).expanduser() if cfg.output else Path(scratch) / "drafter"
        finish(cfg, summary, result, drafter, Path(scratch))
    summary.seconds = time.perf_counter() - start
    if cfg.metrics_out:
        write_metrics(cfg, summary)
    print(summary.line(), flush=True)
    return summary


def finish(cfg: DistillConfig, summary: Summary, result, drafter: Path, scratch: Path) -> None:
    """Fetch the final checkpoint, write it as a compact drafter folder into ``drafter``, read
    its history, measure it, hot-swap it."""
    final = scratch / "final"
    result.checkpoint.to_directory(str(final))
    summary.history = json.loads((final / "trainer_state.json").read_text())["history"]
    summary.last_step = summary.history[-1]["step"]
    summary.first_step = int((result.metrics or {}).get("started_at", summary.last_step))
    student = load_model(str(final), "float32")
    verifier = load_model(cfg.engine.model, cfg.engine.dtype).model
    save_compact(student.model, student.tokenizer, drafter, verifier)
    (drafter / "trainer_state.json").write_text((final / "trainer_state.json").read_text())
    del student, verifier
    summary.drafter = str(drafter) if cfg.output else ""
    if cfg.eval.prompts:
        began = time.perf_counter()
        summary.acceptance = measure(cfg, drafter, scratch / "initial")
        summary.stage_seconds["eval"] = time.perf_counter() - began
    summary.swapped = hot_swap(cfg, final)


def fit(cfg: DistillConfig, data: tuple):
    """Train with a ``TorchTrainer``; a run of the same name in the same storage resumes."""
    train = cfg.train
    if not train.threads:  # Ray gives each worker one thread unless told otherwise
        train = dataclasses.replace(train, threads=max(1, int(cfg.workers.cpus_per_worker)))
    loop_config = {
        "train": train,
        "student": cfg.student,
        "verifier": cfg.engine.model,
        "data": data,
        "strategy": cfg.workers.strategy,
    }
    return run_trainer(train_loop_per_worker, loop_config, cfg.workers, cfg.name, cfg.storage_path, cfg.s3)


def measure(cfg: DistillConfig, drafter: Path, scratch: Path) -> dict[str, float]:
    """Mean accepted tokens per verifier step, greedy, on the first ``eval.prompts`` held-out
    prompts, with the initial student and with ``drafter`` as the engine's ``model:`` drafter."""
    student, tokenizer = build_student(cfg.student, cfg.engine.model, cfg.engine.dtype)
    save_student(student, tokenizer, scratch)
    del student
    prompts = [row["prompt"] for row in load_prompts(cfg) if row["split"] == "val"][: cfg.eval.prompts]
    params = SamplingParams(max_new_tokens=cfg.eval.max_new_tokens)
    out = {}
    for label, path in (("before", scratch), ("after", drafter)):
        engine = Engine(dataclasses.replace(cfg.engine, drafter=f"model:{path}"))
        ids = [engine.encode(text, chat=cfg.teacher.chat) for text in prompts]
        results = engine.generate(ids, params)
        out[label] = sum(r.stats.new_tokens for r in results) / sum(r.stats.steps for r in results)
    return out


def hot_swap(cfg: DistillConfig, drafter: Path) -> list[str]:
    """Load the final weights into each live drafter actor named in ``cfg.hot_swap``."""
    if not cfg.hot_swap:
        return []
    import ray

    from pipelines.common.storage import read_safetensors

    weights = ray.put(read_safetensors(str(drafter)))  # sent as data: the actors may be elsewhere
    namespace = cfg.hot_swap_namespace or None
    handles = {name: ray.get_actor(name, namespace=namespace) for name in cfg.hot_swap}
    ray.get([handle.load_weights.remote(weights) for handle in handles.values()])
    return list(handles)

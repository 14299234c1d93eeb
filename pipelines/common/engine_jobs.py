"""What the jobs that train on the live engine actors (``tandem rl``, ``tandem preference``)
share: the engine actor graphs started and stopped around the run, the recorded settings, the
controller loop's common settings, the task and prompter of the held-out evaluation, the final
checkpoint read back, the record closed and published."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from actors.trainers.rl.rollout import Prompter
from actors.trainers.rl.tasks import Task, build_task
from pipelines.common.evaluate import mcnemar
from pipelines.common.storage import read_safetensors
from pipelines.common.training import fit
from pipelines.graph import GraphConfig, start_graph, wait_ready

#: the :class:`~pipelines.common.job_config.EngineJobConfig` settings a resumed run may change:
#: they do not change the trajectory so far (each job adds its own length: ``steps``, ``rounds``)
FREE_ON_RESUME = ("eval", "metrics_out", "checkpoint_every", "keep_checkpoints", "sync_timeout_s", "s3")


def fit_job(cfg, train_loop: Callable[[dict], None], loop) -> object:
    """Run ``train_loop`` with ``loop`` (its config) on ``cfg``'s worker group, as the run
    ``cfg.storage_path/cfg.name`` keeping ``cfg.keep_checkpoints``; the Ray Train result."""
    return fit(
        train_loop, {"loop": loop}, cfg.workers, cfg.name, cfg.storage_path, cfg.s3, keep=cfg.keep_checkpoints
    )


def expanded(cfg) -> dict:
    """The run's settings as recorded (credentials left out), as JSON reads them back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg) | {"s3": None}))


def trajectory_settings(cfg, free: tuple[str, ...]) -> dict:
    """The expanded settings a resume must match: all but the ``free`` ones (those a resumed
    run may change, as they do not change the trajectory so far)."""
    return {key: value for key, value in expanded(cfg).items() if key not in free}


@contextlib.contextmanager
def engine_graphs(cfg, count: int) -> Iterator[tuple[list[str], str]]:
    """``count`` actor graphs (engine + drafter) of ``cfg.engine`` / ``cfg.drafter`` /
    ``cfg.verifier``, named ``{cfg.name}-{i}``, for the body of the ``with``; yields the engine
    actors' names and their Ray namespace once every actor has started, and kills the actors
    on exit.

    Joins the Ray cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it), else starts a local one.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    graphs = [
        start_graph(
            GraphConfig(engine=cfg.engine, drafter=cfg.drafter, verifier=cfg.verifier, name=f"{cfg.name}-{i}")
        )
        for i in range(count)
    ]
    names = [f"{cfg.name}-{i}-verifier" for i in range(count)]
    try:
        for graph in graphs:
            wait_ready(graph)
        yield names, ray.get_runtime_context().namespace
    finally:
        for graph in graphs:
            ray.kill(graph.engine)
            if graph.drafter is not None:
                ray.kill(graph.drafter)


def controller_settings(cfg, names: list[str], namespace: str, threads: int, free: tuple[str, ...]) -> dict:
    """The fields of :class:`~actors.trainers.controller.ControllerConfig` (and the task) from
    the job's ``cfg``: its loop's ``LoopConfig(**controller_settings(...), ...)``.

    ``threads`` is the job's configured torch thread count (0 = as many as the worker's CPUs).
    """
    return {
        "model": cfg.engine.model,
        "engines": names,
        "namespace": namespace,
        "task": cfg.task,
        "seed": cfg.seed,
        "checkpoint_every": cfg.checkpoint_every,
        "sync_timeout_s": cfg.sync_timeout_s,
        "strategy": cfg.workers.strategy,
        "threads": threads or max(1, int(cfg.workers.cpus_per_worker)),
        "expanded": trajectory_settings(cfg, free),
    }


def tokenizer_of(model: str):
    """The tokenizer of the model spec ``model``."""
    from transformers import AutoTokenizer

    from actors.models import resolve_path

    return AutoTokenizer.from_pretrained(resolve_path(model))


def task_prompter(cfg, tokenizer=None) -> tuple[Task, Prompter]:
    """``cfg.task``'s task and the prompter of its problems (``tokenizer``: the engine model's
    by default), as the held-out evaluation and the training loop build them."""
    task = build_task(cfg.task.name, **cfg.task.knobs)
    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(cfg.engine.model)
    return task, Prompter(tokenizer, task, cfg.task.few_shot, cfg.task.response_prefix)


def final_checkpoint(result, weights: bool = False) -> tuple[list[dict], dict | None]:
    """From one download of a Ray Train result's final checkpoint: every step's metrics
    (resumed parts included) and, when ``weights``, the policy's weights."""
    with tempfile.TemporaryDirectory(prefix="final-checkpoint-") as scratch:
        result.checkpoint.to_directory(scratch)
        history = json.loads((Path(scratch) / "trainer_state.json").read_text())["history"]
        return history, read_safetensors(str(Path(scratch) / "model.safetensors")) if weights else None


def close_record(record: dict, result, began: float) -> None:
    """Finish a run's ``record``: the paired test between the start and end evaluations (when
    both have per-problem answers), the final checkpoint's path, the seconds since ``began``."""
    start, end = record["eval"].get("start", {}), record["eval"].get("end", {})
    if "correct" in start and "correct" in end:
        record["eval"]["paired_test"] = mcnemar(start["correct"], end["correct"])
    record["checkpoint"] = result.checkpoint.path
    record["seconds"] = time.perf_counter() - began


def publish(record: dict, metrics_out: str, write: Callable, summary: Callable[[dict], str]) -> dict:
    """Write ``record`` with ``write(metrics_out, record)`` when ``metrics_out`` is set, print
    its ``summary`` line, and return it."""
    if metrics_out:
        write(metrics_out, record)
    print(summary(record), flush=True)
    return record

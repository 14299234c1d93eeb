"""The RL job: engine actors from the actor graph, a held-out evaluation, the controller loop in
Ray Train, the final evaluation with the trained weights in the same engines, the record."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from actors.trainers.rl.engines import EnginePool
from actors.trainers.rl.loop import LoopConfig, train_loop_per_worker
from actors.trainers.rl.rollout import Prompter
from actors.trainers.rl.tasks import build_task
from pipelines.common.storage import read_safetensors
from pipelines.common.training import fit
from pipelines.graph import GraphConfig, start_graph
from pipelines.rl.config import RLConfig
from pipelines.rl.evaluate import evaluate, mcnemar
from pipelines.rl.report import write_record
from pipelines.rl.speculation import compare

log = logging.getLogger(__name__)


#: settings a resumed run may change: they do not change the trajectory
FREE_ON_RESUME = ("steps", "eval", "metrics_out", "checkpoint_every", "sync_timeout_s", "s3")


def expanded(cfg: RLConfig) -> dict:
    """The run's settings as recorded (credentials left out), as JSON reads them back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg) | {"s3": None}))


def trajectory_settings(cfg: RLConfig) -> dict:
    """The expanded settings a resume must match."""
    return {key: value for key, value in expanded(cfg).items() if key not in FREE_ON_RESUME}


def main(cfg: RLConfig) -> dict:
    """Run (or resume) ``cfg``; print a summary line and return the record."""
    import ray

    began = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    graphs = [
        start_graph(
            GraphConfig(engine=cfg.engine, drafter=cfg.drafter, verifier=cfg.verifier, name=f"{cfg.name}-{i}")
        )
        for i in range(cfg.rollout.engines)
    ]
    names = [f"{cfg.name}-{i}-verifier" for i in range(cfg.rollout.engines)]
    namespace = ray.get_runtime_context().namespace
    try:
        engines = EnginePool(names, namespace, cfg.rollout.timeout_s, cfg.sync_timeout_s)
        record = {"config": expanded(cfg), "eval": {}, "speculation": []}
        evaluation = held_out(cfg, engines)
        if evaluation:
            record["eval"]["start"] = evaluation()
        if cfg.eval.speculation_problems:
            record["speculation"].append(compare(cfg, None, "start"))
        result = train(cfg, names, namespace)
        record["history"], weights = final_checkpoint(result, weights=bool(cfg.eval.speculation_problems))
        if weights is not None:
            record["speculation"].append(compare(cfg, weights, "end"))
        if evaluation:
            record["eval"]["end"] = evaluation()
            before, after = record["eval"]["start"]["correct"], record["eval"]["end"]["correct"]
            record["eval"]["paired_test"] = mcnemar(before, after)
        record["checkpoint"] = result.checkpoint.path
        record["seconds"] = time.perf_counter() - began
    finally:
        for graph in graphs:
            ray.kill(graph.engine)
            if graph.drafter is not None:
                ray.kill(graph.drafter)
    if cfg.metrics_out:
        write_record(cfg.metrics_out, record)
    print(summary_line(record), flush=True)
    return record


def held_out(cfg: RLConfig, engines: EnginePool):
    """A function that evaluates the engines' current policy, or None when ``eval.problems`` is 0."""
    if not cfg.eval.problems:
        return None
    from transformers import AutoTokenizer

    from actors.models import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path(cfg.engine.model))
    task = build_task(cfg.task.name, **cfg.task.knobs)
    prompter = Prompter(tokenizer, task, cfg.task.few_shot, cfg.task.response_prefix)
    tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens

    def run() -> dict:
        log.info("[tandem rl] evaluating %d held-out problems (greedy)", cfg.eval.problems)
        return evaluate(engines, task, prompter, cfg.eval.seed, cfg.eval.problems, tokens)

    return run


def train(cfg: RLConfig, names: list[str], namespace: str):
    """The controller loop on the Ray Train workers; resumes a run of the same name."""
    loop = LoopConfig(
        model=cfg.engine.model,
        engines=names,
        namespace=namespace,
        task=cfg.task,
        rollout=cfg.rollout,
        algorithm=cfg.algorithm,
        reward=cfg.reward,
        optim=cfg.optim,
        steps=cfg.steps,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        sync_timeout_s=cfg.sync_timeout_s,
        strategy=cfg.workers.strategy,
        threads=cfg.optim.threads or max(1, int(cfg.workers.cpus_per_worker)),
        expanded=trajectory_settings(cfg),
    )
    return fit(train_loop_per_worker, {"loop": loop}, cfg.workers, cfg.name, cfg.storage_path, cfg.s3)


def final_checkpoint(result, weights: bool) -> tuple[list[dict], dict | None]:
    """From one download of the final checkpoint: every step's metrics (resumed parts included)
    and, when ``weights``, the policy's weights."""
    with tempfile.TemporaryDirectory(prefix="rl-") as scratch:
        result.checkpoint.to_directory(scratch)
        history = json.loads((Path(scratch) / "trainer_state.json").read_text())["history"]
        return history, read_safetensors(str(Path(scratch) / "model.safetensors")) if weights else None


def summary_line(record: dict) -> str:
    last = record["history"][-1] if record.get("history") else {}
    parts = [f"[tandem rl] {last.get('step', 0)} steps in {record.get('seconds', 0):.0f}s"]
    if {"start", "end"} <= set(record["eval"]):
        start, end = record["eval"]["start"], record["eval"]["end"]
        parts.append(
            f"held-out strict accuracy {start['strict_accuracy']:.1%} → {end['strict_accuracy']:.1%} "
            f"(p={record['eval']['paired_test']['p_value']:.3g}), mean length "
            f"{start['mean_length']:.0f} → {end['mean_length']:.0f}"
        )
    for spec in record.get("speculation", []):
        parts.append(
            f"speculation ({spec['label']}): {spec['on']['tok_per_s']:.1f} vs "
            f"{spec['off']['tok_per_s']:.1f} tok/s = {spec['speedup']:.2f}x, "
            f"{spec['mismatches']}/{spec['sequences']} sequences differ"
        )
    if last:
        speed = last["spec/tokens_per_step"]
        parts.append(f"last step reward {last['reward/mean']:.3f}, {speed:.2f} tokens per verifier step")
    return "; ".join(parts)

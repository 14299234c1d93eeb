"""The RL job: engine actors from the actor graph, a held-out evaluation, the controller loop in
Ray Train, the final evaluation with the trained weights in the same engines, the record."""

from __future__ import annotations

import logging
import time

from actors.trainers.rl.engines import EnginePool
from actors.trainers.rl.loop import LoopConfig, train_loop_per_worker
from pipelines.common import engine_jobs
from pipelines.common.evaluate import evaluate
from pipelines.rl.config import RLConfig
from pipelines.rl.report import write_record
from pipelines.rl.speculation import compare

log = logging.getLogger(__name__)


#: settings a resumed run may change: they do not change the trajectory
FREE_ON_RESUME = ("steps", *engine_jobs.FREE_ON_RESUME)


def main(cfg: RLConfig) -> dict:
    """Run (or resume) ``cfg``; print a summary line and return the record."""
    began = time.perf_counter()
    with engine_jobs.engine_graphs(cfg, cfg.rollout.engines) as (names, namespace):
        engines = EnginePool(names, namespace, cfg.rollout.timeout_s, cfg.sync_timeout_s)
        record = {"config": engine_jobs.expanded(cfg), "eval": {}, "speculation": []}
        evaluation = held_out(cfg, engines)
        if evaluation:
            record["eval"]["start"] = evaluation()
        if cfg.eval.speculation_problems:
            record["speculation"].append(compare(cfg, None, "start"))
        result = train(cfg, names, namespace)
        record["history"], weights = engine_jobs.final_checkpoint(
            result, weights=bool(cfg.eval.speculation_problems)
        )
        if weights is not None:
            record["speculation"].append(compare(cfg, weights, "end"))
        if evaluation:
            record["eval"]["end"] = evaluation()
        engine_jobs.close_record(record, result, began)
    return engine_jobs.publish(record, cfg.metrics_out, write_record, summary_line)


def held_out(cfg: RLConfig, engines: EnginePool):
    """A function that evaluates the engines' current policy, or None when ``eval.problems`` is 0."""
    if not cfg.eval.problems:
        return None
    task, prompter = engine_jobs.task_prompter(cfg)
    tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens

    def run() -> dict:
        log.info("[tandem rl] evaluating %d held-out problems (greedy)", cfg.eval.problems)
        return evaluate(engines, task, prompter, cfg.eval.seed, cfg.eval.problems, tokens)

    return run


def train(cfg: RLConfig, names: list[str], namespace: str):
    """The controller loop on the Ray Train workers; resumes a run of the same name."""
    loop = LoopConfig(
        **engine_jobs.controller_settings(cfg, names, namespace, cfg.optim.threads, FREE_ON_RESUME),
        rollout=cfg.rollout,
        algorithm=cfg.algorithm,
        reward=cfg.reward,
        optim=cfg.optim,
        steps=cfg.steps,
    )
    return engine_jobs.fit_job(cfg, train_loop_per_worker, loop)


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

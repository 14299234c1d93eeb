"""The preference job: engine actors from the actor graph, the pairs (a dataset's, or none: the
loop samples them), the held-out pairs and a start evaluation, the rounds in Ray Train, the final
evaluation with the trained weights in the same engines, the record."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

from actors.trainers.preference.loop import LoopConfig, train_loop_per_worker
from actors.trainers.preference.pairs import Pair, attach_reference
from actors.trainers.rl.engines import EnginePool
from actors.trainers.rl.rollout import Prompter
from actors.trainers.rl.tasks import build_task
from pipelines.common.training import fit
from pipelines.graph import GraphConfig, start_graph
from pipelines.preference.config import PreferenceConfig
from pipelines.preference.dataset import load_pairs
from pipelines.preference.evaluate import pair_accuracy, sampled_pairs
from pipelines.preference.report import write_record
from pipelines.rl.evaluate import evaluate, mcnemar

log = logging.getLogger(__name__)

#: settings a resumed run may change: they do not change the trajectory so far
FREE_ON_RESUME = ("rounds", "eval", "metrics_out", "checkpoint_every", "sync_timeout_s", "s3")
SHOWN_BAD_ROWS = 10


def expanded(cfg: PreferenceConfig) -> dict:
    """The run's settings as recorded (credentials left out), as JSON reads them back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg) | {"s3": None}))


def trajectory_settings(cfg: PreferenceConfig) -> dict:
    """The expanded settings a resume must match."""
    return {key: value for key, value in expanded(cfg).items() if key not in FREE_ON_RESUME}


def main(cfg: PreferenceConfig) -> dict:
    """Run (or resume) ``cfg``; print a summary line and return the record."""
    import ray

    began = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    graphs = [
        start_graph(
            GraphConfig(engine=cfg.engine, drafter=cfg.drafter, verifier=cfg.verifier, name=f"{cfg.name}-{i}")
        )
        for i in range(cfg.sampling.engines)
    ]
    names = [f"{cfg.name}-{i}-verifier" for i in range(cfg.sampling.engines)]
    namespace = ray.get_runtime_context().namespace
    try:
        engines = EnginePool(names, namespace, cfg.sampling.timeout_s, cfg.sync_timeout_s)
        record = {"config": expanded(cfg), "eval": {}}
        held_out, train_pairs, record["data"] = data_stage(cfg, engines)
        evaluation = evaluator(cfg, engines, held_out)
        record["eval"]["start"] = evaluation()
        result = train(cfg, names, namespace, train_pairs)
        record["history"] = final_history(result)
        record["eval"]["end"] = evaluation()
        if "correct" in record["eval"]["start"]:
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


def tokenizer_of(cfg: PreferenceConfig):
    from transformers import AutoTokenizer

    from actors.models import resolve_path

    return AutoTokenizer.from_pretrained(resolve_path(cfg.engine.model))


def data_stage(cfg: PreferenceConfig, engines: EnginePool) -> tuple[list[Pair], list[dict] | None, dict]:
    """The held-out pairs, round 0's training pairs (a dataset's; None when on-policy) and what
    the stage did. Every pair gets its reference log-probs from the engines (the starting
    policy), teacher-forced, once."""
    tokenizer = tokenizer_of(cfg)
    if not cfg.data.dataset:
        task = build_task(cfg.task.name, **cfg.task.knobs)
        prompter = Prompter(tokenizer, task, cfg.task.few_shot, cfg.task.response_prefix)
        held_out = []
        if cfg.eval.pair_problems:
            log.info("[tandem preference] sampling held-out pairs from %d problems", cfg.eval.pair_problems)
            held_out = sampled_pairs(
                engines,
                task,
                prompter,
                cfg.sampling,
                cfg.eval.seed,
                cfg.eval.pair_problems,
                cfg.task.response_prefix,
            )
        attach_reference(held_out, engines.score)
        return held_out, None, {"source": "on_policy", "held_out_pairs": len(held_out)}
    pairs, bad, rows = load_pairs(cfg.data, cfg.s3, tokenizer)
    for row in bad[:SHOWN_BAD_ROWS]:
        print(f"[tandem preference] bad row {row.row} ({row.file}): {row.reason}", flush=True)
    if len(bad) > SHOWN_BAD_ROWS:
        print(f"[tandem preference] ... and {len(bad) - SHOWN_BAD_ROWS} more bad rows", flush=True)
    if len(pairs) <= cfg.eval.pairs:
        raise ValueError(
            f"{cfg.data.dataset}: {len(pairs)} good rows of {rows}, none left to train on after "
            f"eval.pairs={cfg.eval.pairs}"
        )
    chosen = set(random.Random(cfg.seed).sample(range(len(pairs)), cfg.eval.pairs))
    held_out = [p for i, p in enumerate(pairs) if i in chosen]
    train_pairs = [p for i, p in enumerate(pairs) if i not in chosen]
    attach_reference(held_out, engines.score)
    if cfg.loss.needs_reference:
        attach_reference(train_pairs, engines.score)
    stage = {
        "source": cfg.data.dataset,
        "rows": rows,
        "pairs": len(train_pairs),
        "held_out_pairs": len(held_out),
        "bad_rows": [row.to_dict() for row in bad],
    }
    return held_out, [p.to_dict() for p in train_pairs], stage


def evaluator(cfg: PreferenceConfig, engines: EnginePool, held_out: list[Pair]):
    """A function that evaluates the engines' current policy: the implicit reward on the held-out
    pairs, greedy answers to ``eval.problems`` task problems, and the ``seed`` they use."""
    task = build_task(cfg.task.name, **cfg.task.knobs)
    prompter = Prompter(tokenizer_of(cfg), task, cfg.task.few_shot, cfg.task.response_prefix)
    tokens = cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens

    def run() -> dict:
        out = {"seed": cfg.eval.seed} | pair_accuracy(held_out, engines.score, cfg.loss)
        if cfg.eval.problems:
            log.info("[tandem preference] evaluating %d held-out problems (greedy)", cfg.eval.problems)
            out |= evaluate(engines, task, prompter, cfg.eval.seed, cfg.eval.problems, tokens)
        return out

    return run


def train(cfg: PreferenceConfig, names: list[str], namespace: str, pairs: list[dict] | None):
    """The rounds on the Ray Train workers; resumes a run of the same name."""
    loop = LoopConfig(
        model=cfg.engine.model,
        engines=names,
        namespace=namespace,
        task=cfg.task,
        sampling=cfg.sampling,
        loss=cfg.loss,
        train=cfg.train,
        rounds=cfg.rounds,
        pairs=pairs,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        sync_timeout_s=cfg.sync_timeout_s,
        strategy=cfg.workers.strategy,
        threads=cfg.train.threads or max(1, int(cfg.workers.cpus_per_worker)),
        expanded=trajectory_settings(cfg),
    )
    return fit(train_loop_per_worker, {"loop": loop}, cfg.workers, cfg.name, cfg.storage_path, cfg.s3)


def final_history(result) -> list[dict]:
    """Every step's metrics (resumed parts included), from the final checkpoint."""
    with tempfile.TemporaryDirectory(prefix="preference-") as scratch:
        result.checkpoint.to_directory(scratch)
        return json.loads((Path(scratch) / "trainer_state.json").read_text())["history"]


def summary_line(record: dict) -> str:
    history = record.get("history") or []
    last = history[-1] if history else {}
    rounds = last.get("round", -1) + 1
    seconds = record.get("seconds", 0)
    parts = [f"[tandem preference] {last.get('step', 0)} steps in {rounds} round(s), {seconds:.0f}s"]
    bad = record["data"].get("bad_rows")
    if bad is not None:
        parts.append(f"{record['data']['pairs']} training pairs, {len(bad)} bad rows left out")
    start, end = record["eval"].get("start", {}), record["eval"].get("end", {})
    if "pair_accuracy" in end:
        parts.append(f"held-out pair accuracy {start['pair_accuracy']:.1%} → {end['pair_accuracy']:.1%}")
    if "strict_accuracy" in end:
        parts.append(
            f"strict accuracy {start['strict_accuracy']:.1%} → {end['strict_accuracy']:.1%} "
            f"(p={record['eval']['paired_test']['p_value']:.3g}), mean length "
            f"{start['mean_length']:.1f} → {end['mean_length']:.1f}"
        )
    return "; ".join(parts)

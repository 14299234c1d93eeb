"""The preference job: engine actors from the actor graph, the pairs (a dataset's, or none: the
loop samples them), the held-out pairs and a start evaluation, the rounds in Ray Train, the final
evaluation with the trained weights in the same engines, the record."""

from __future__ import annotations

import logging
import random
import time

from actors.trainers.preference.loop import LoopConfig, train_loop_per_worker
from actors.trainers.preference.pairs import Pair, attach_reference
from actors.trainers.rl.engines import EnginePool
from pipelines.common import engine_jobs
from pipelines.common.evaluate import evaluate
from pipelines.preference.config import PreferenceConfig
from pipelines.preference.dataset import load_pairs
from pipelines.preference.evaluate import pair_accuracy, sampled_pairs
from pipelines.preference.report import write_record

log = logging.getLogger(__name__)

#: settings a resumed run may change: they do not change the trajectory so far
FREE_ON_RESUME = ("rounds", *engine_jobs.FREE_ON_RESUME)
SHOWN_BAD_ROWS = 10


def main(cfg: PreferenceConfig) -> dict:
    """Run (or resume) ``cfg``; print a summary line and return the record."""
    began = time.perf_counter()
    with engine_jobs.engine_graphs(cfg, cfg.sampling.engines) as (names, namespace):
        engines = EnginePool(names, namespace, cfg.sampling.timeout_s, cfg.sync_timeout_s)
        record = {"config": engine_jobs.expanded(cfg), "eval": {}}
        held_out, train_pairs, record["data"] = data_stage(cfg, engines)
        evaluation = evaluator(cfg, engines, held_out)
        record["eval"]["start"] = evaluation()
        result = train(cfg, names, namespace, train_pairs)
        record["history"], _ = engine_jobs.final_checkpoint(result)
        record["eval"]["end"] = evaluation()
        engine_jobs.close_record(record, result, began)
    return engine_jobs.publish(record, cfg.metrics_out, write_record, summary_line)


def data_stage(cfg: PreferenceConfig, engines: EnginePool) -> tuple[list[Pair], list[dict] | None, dict]:
    """The held-out pairs, round 0's training pairs (a dataset's; None when on-policy) and what
    the stage did. Every pair gets its reference log-probs from the engines (the starting
    policy), teacher-forced, once."""
    tokenizer = engine_jobs.tokenizer_of(cfg.engine.model)
    if not cfg.data.dataset:
        task, prompter = engine_jobs.task_prompter(cfg, tokenizer)
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
    task, prompter = engine_jobs.task_prompter(cfg)
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
        **engine_jobs.controller_settings(cfg, names, namespace, cfg.train.threads, FREE_ON_RESUME),
        sampling=cfg.sampling,
        loss=cfg.loss,
        train=cfg.train,
        rounds=cfg.rounds,
        pairs=pairs,
    )
    return engine_jobs.fit_job(cfg, train_loop_per_worker, loop)


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

"""Speculation on vs off on the same rollout batch: same weights, same seeds, interleaved, in this
process. Speculative rollouts are exact, so the tokens must be identical; what changes is time."""

from __future__ import annotations

import dataclasses
import time

import torch

from actors.engine import Engine
from actors.messages import SamplingParams
from actors.models import LoadedModel, load_model
from actors.trainers.rl.rollout import Prompter, sample_seed
from actors.trainers.rl.tasks import build_task
from pipelines.rl.config import RLConfig


def compare(cfg: RLConfig, weights: dict[str, torch.Tensor] | None, label: str) -> dict:
    """Roll out step 0's problems (``eval.speculation_problems`` of them, ``rollout.n`` samples
    each, the run's seeds) with ``cfg.engine.drafter`` and with no drafter, on ``weights`` (None:
    the model as loaded), twice each, alternating; tokens compared, the faster run of each kept."""
    task = build_task(cfg.task.name, **cfg.task.knobs)
    count = cfg.eval.speculation_problems
    engines = {
        name: engine_with(cfg, drafter, weights)
        for name, drafter in (("on", cfg.engine.drafter), ("off", "none"))
    }
    tokenizer = engines["on"].tokenizer
    problems = [task.problem(cfg.seed, index) for index in range(count)]
    prompter = Prompter(tokenizer, task, cfg.task.few_shot, cfg.task.response_prefix)
    prompts = [prompter(p) for p in problems for _ in range(cfg.rollout.n)]
    params = [
        SamplingParams(
            max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature,
            seed=sample_seed(cfg.seed, 0, p.index, k, cfg.rollout.seed_mode),
        )
        for p in problems
        for k in range(cfg.rollout.n)
    ]
    runs: dict[str, dict] = {}
    for _ in range(2):
        for name, engine in engines.items():
            began = time.perf_counter()
            results = engine.generate(prompts, params)
            seconds = time.perf_counter() - began
            tokens = sum(len(r.token_ids) for r in results)
            steps = sum(r.stats.steps for r in results)
            best = runs.get(name)
            if best is None or seconds < best["seconds"]:
                runs[name] = {
                    "seconds": seconds,
                    "tokens": tokens,
                    "tok_per_s": tokens / seconds,
                    "tokens_per_step": tokens / steps,
                    "ids": [r.token_ids for r in results],
                }
    mismatches = sum(a != b for a, b in zip(runs["on"].pop("ids"), runs["off"].pop("ids")))
    return {
        "label": label,
        "drafter": cfg.engine.drafter,
        "sequences": len(prompts),
        "mismatches": mismatches,
        "on": runs["on"],
        "off": runs["off"],
        "speedup": runs["on"]["tok_per_s"] / runs["off"]["tok_per_s"],
    }


def engine_with(cfg: RLConfig, drafter: str, weights: dict[str, torch.Tensor] | None) -> Engine:
    loaded: LoadedModel = load_model(cfg.engine.model, cfg.engine.dtype)
    engine = Engine(dataclasses.replace(cfg.engine, drafter=drafter), loaded=loaded)
    if weights:
        engine.load_weights(weights, 1)
    return engine

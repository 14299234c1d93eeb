"""Held-out evaluation of the policy the engine actors hold (``tandem rl``, ``tandem preference``):
greedy answers to fixed problems, and the paired test between two such evaluations."""

from __future__ import annotations

import statistics

from actors.messages import SamplingParams
from actors.trainers.rl.rollout import Prompter, collect
from actors.trainers.rl.tasks import Task


def evaluate(engines, task: Task, prompter: Prompter, seed: int, problems: int, max_new_tokens: int) -> dict:
    """Greedy answers to problems ``0..problems-1`` of ``seed`` (not a training seed).

    Returns ``strict_accuracy``, ``lenient_accuracy``, ``mean_length``, ``problems``,
    ``policy_version`` and per problem ``correct`` (for a paired test between two evaluations).
    """
    batch = [task.problem(seed, index) for index in range(problems)]
    prompts = [prompter(problem) for problem in batch]
    params = SamplingParams(max_new_tokens=max_new_tokens, logprobs=True, require_full_length=True)
    groups = collect(engines.generate, task, batch, prompts, 1, params, None, prompter.response_prefix)
    samples = [group[0] for group in groups]
    return {
        "strict_accuracy": statistics.fmean(s.score.correct for s in samples),
        "lenient_accuracy": statistics.fmean(s.score.lenient for s in samples),
        "mean_length": statistics.fmean(len(s.token_ids) for s in samples),
        "problems": problems,
        "policy_version": samples[0].policy_version,
        "correct": [bool(s.score.correct) for s in samples],
        "lengths": [len(s.token_ids) for s in samples],
    }


def mcnemar(before: list[bool], after: list[bool]) -> dict:
    """The exact (binomial) McNemar test of paired correctness: problems that flipped each way
    and the two-sided p-value of a change in accuracy."""
    from math import comb

    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    flips = gained + lost
    tail = sum(comb(flips, k) for k in range(min(gained, lost) + 1)) / 2**flips if flips else 1.0
    return {"gained": gained, "lost": lost, "p_value": min(1.0, 2 * tail)}

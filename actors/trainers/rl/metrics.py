"""The step metrics of an RL run, with TRL/veRL names (``reward/mean``, ``completions/mean_length``,
``rollout_train_logprob_diff/max``, ``spec/tokens_per_step``, ...)."""

from __future__ import annotations

import statistics

import torch

from actors.trainers.rl.policy import CLIP_KEYS
from actors.trainers.rl.rollout import Sample


def rollout_metrics(groups: list[list[Sample]], seconds: float, rounds: int, dropped: int) -> dict:
    """What the rollout did: task reward and accuracy, lengths, clipping, group variance,
    speed and speculation (tokens per verifier step)."""
    samples = [s for g in groups for s in g]
    lengths = [len(s.token_ids) for s in samples]
    tokens = sum(lengths)
    steps = sum(s.steps for s in samples)
    flat = sum(1 for g in groups if len({s.score.reward for s in g}) == 1)
    return {
        "reward/task_mean": statistics.fmean(s.score.reward for s in samples),
        "accuracy/strict": statistics.fmean(s.score.correct for s in samples),
        "accuracy/lenient": statistics.fmean(s.score.lenient for s in samples),
        "accuracy/formatted": statistics.fmean(s.score.formatted for s in samples),
        "completions/mean_length": statistics.fmean(lengths),
        "completions/max_length": max(lengths),
        "completions/clipped_ratio": statistics.fmean(s.finish_reason == "length" for s in samples),
        "frac_reward_zero_std": flat / len(groups),
        "filter_groups/rounds": rounds,
        "filter_groups/dropped": dropped,
        "rollout/tokens": tokens,
        "rollout/tok_per_s": tokens / seconds if seconds else 0.0,
        "spec/tokens_per_step": tokens / steps if steps else 0.0,
        "timing/rollout_s": seconds,
    }


def reduce_update(sums: list[dict], dist) -> dict:
    """The update's metrics over its mini-batches and every worker: token means of entropy, KL,
    clip fractions and the engine/trainer log-prob difference, its max, the mean grad norm."""
    keys = ["tokens", "entropy", "rollout_train_logprob_diff/sum", *CLIP_KEYS]
    keys += ["kl"] if "kl" in sums[0] else []
    total = torch.tensor([sum(part[key] for part in sums) for key in keys], dtype=torch.float64)
    worst = torch.tensor([max(part["rollout_train_logprob_diff/max"] for part in sums)], dtype=torch.float64)
    if dist is not None:
        dist.all_reduce(total)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    values = dict(zip(keys, total.tolist()))
    tokens = max(values.pop("tokens"), 1.0)
    out = {key: value / tokens for key, value in values.items()}
    out["rollout_train_logprob_diff/mean"] = out.pop("rollout_train_logprob_diff/sum")
    out["rollout_train_logprob_diff/max"] = float(worst)
    out["grad_norm"] = statistics.fmean(part["grad_norm"] for part in sums)
    out["pg_loss"] = sum(part["pg_loss"] for part in sums)
    out["lr"] = sums[-1]["lr"]
    return out

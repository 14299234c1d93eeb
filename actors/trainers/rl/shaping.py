"""From scored samples to advantages: the length-aware term, DAPO's group filter, the estimator."""

from __future__ import annotations

import torch

from actors.trainers.rl.advantages import compute_advantages
from actors.trainers.rl.config import AlgorithmConfig, RewardConfig
from actors.trainers.rl.length import AccuracyGate, dapo_overlong, dler_truncate, kimi_length, short_rl
from actors.trainers.rl.rollout import Sample


def apply_length_reward(
    groups: list[list[Sample]], cfg: RewardConfig, gate: AccuracyGate, max_new_tokens: int
) -> dict[str, float]:
    """Add ``cfg.length``'s term to every sample's ``reward`` in place; return what it did
    (``reward/length_mean``: the mean term, ``reward/length_on``: 1 when it applied)."""
    terms: list[float] = []
    on = cfg.length != "none"
    if cfg.length == "short_rl":
        accuracy = sum(s.score.correct for g in groups for s in g) / max(1, sum(len(g) for g in groups))
        on = gate.update(accuracy)
    for group in groups if on else []:
        lengths = [len(s.token_ids) for s in group]
        correct = [s.score.correct for s in group]
        if cfg.length == "short_rl":
            added = [cfg.length_coef * x for x in short_rl(lengths, correct, cfg.tolerance)]
        elif cfg.length == "kimi":
            added = [cfg.length_coef * x for x in kimi_length(lengths, correct)]
        elif cfg.length == "dapo_overlong":
            buffer = min(cfg.overlong_buffer, max_new_tokens)
            added = [dapo_overlong(n, max_new_tokens, buffer, cfg.overlong_penalty_factor) for n in lengths]
        else:  # dler: the reward itself is cut to 0 beyond the truncation length
            limit = cfg.truncation_length or max_new_tokens
            cut = dler_truncate(
                [s.reward for s in group], lengths, limit, [s.finish_reason == "length" for s in group]
            )
            added = [new - s.reward for new, s in zip(cut, group)]
        for sample, term in zip(group, added):
            sample.reward += term
        terms += added
    return {"reward/length_mean": sum(terms) / len(terms) if terms else 0.0, "reward/length_on": float(on)}


def informative(group: list[Sample], metric: str) -> bool:
    """DAPO's dynamic-sampling test: the group's ``metric`` is not the same for every sample."""
    values = {s.reward if metric == "reward" else s.score.correct for s in group}
    return len(values) > 1


def advantages(groups: list[list[Sample]], cfg: AlgorithmConfig) -> torch.Tensor:
    """``[G, n]`` advantages of the groups' rewards under ``cfg.adv_estimator``."""
    rewards = torch.tensor([[s.reward for s in g] for g in groups], dtype=torch.float64)
    options = {"norm_adv_by_std_in_grpo": cfg.norm_adv_by_std_in_grpo} if cfg.adv_estimator == "grpo" else {}
    return compute_advantages(cfg.adv_estimator, rewards, **options).float()

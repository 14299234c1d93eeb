"""Outcome advantage estimators, one registered function each (veRL's ``@register_adv_est``).

Every estimator maps the rewards of a batch of groups, ``rewards: [G, n]`` (G problems, n samples
each, one scalar reward per sample), to one advantage per sample, ``[G, n]``; the trainer
broadcasts it over the sample's tokens. Estimators that use batch statistics (``batch``,
``bnpo``) must see the **whole** step's batch: compute advantages where all groups' rewards are
(rank 0, or after an all-gather), not per worker shard.

- ``grpo``: ``(r - mean_g) / (std_g + eps)``, unbiased std (veRL, TRL ``scale_rewards="group"``);
  ``norm_adv_by_std_in_grpo=False`` gives ``r - mean_g``.
- ``dr_grpo``: ``r - mean_g`` (Dr. GRPO; no std division).
- ``rloo``: ``r_i - mean of the other n - 1`` (leave-one-out baseline).
- ``batch``: ``(r - mean_g) / (std of all G·n rewards + eps)`` (TRL ``scale_rewards="batch"``, DLER).
- ``bnpo``: Beta normalisation (arXiv 2506.02864), see :func:`bnpo`.

Every estimator refuses groups of fewer than 2 samples: a group of one has no baseline.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

AdvEstimator = Callable[..., torch.Tensor]
ADV_ESTIMATORS: dict[str, AdvEstimator] = {}


def register_adv_estimator(name: str) -> Callable[[AdvEstimator], AdvEstimator]:
    """Decorator: register ``fn(rewards: [G, n], **options) -> [G, n]`` under ``name``."""

    def decorate(fn: AdvEstimator) -> AdvEstimator:
        if name in ADV_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADV_ESTIMATORS[name] = fn
        return fn

    return decorate


def compute_advantages(name: str, rewards: torch.Tensor, **options) -> torch.Tensor:
    """Advantages of ``rewards: [G, n]`` by the registered estimator ``name``.

    Raises:
        ValueError: unknown estimator (the known ones are listed), unknown option (named),
            rewards not ``[G, n]`` with ``n >= 2``, or non-finite rewards.
    """
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADV_ESTIMATORS)}")
    estimator = ADV_ESTIMATORS[name]
    accepted = list(inspect.signature(estimator).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for advantage estimator {name!r}; accepted: {accepted}"
        )
    return estimator(rewards, **options)


def _groups(rewards: torch.Tensor) -> torch.Tensor:
    """Validate ``[G, n]`` rewards with ``n >= 2``; return them as a floating tensor."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G, n] (groups x samples), got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(
            f"groups of {rewards.shape[1]} sample(s): group advantages need n >= 2 samples per problem "
            "(rollout.n >= 2); a group of one has no baseline"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    return rewards


@register_adv_estimator("grpo")
def grpo(rewards: torch.Tensor, norm_adv_by_std_in_grpo: bool = True, epsilon: float = 1e-6) -> torch.Tensor:
    """GRPO: ``(r - mean_g) / (std_g + epsilon)`` with the unbiased std of each group.

    Args:
        rewards: ``[G, n]``.
        norm_adv_by_std_in_grpo: divide by the group std (veRL's name); False gives ``r - mean_g``.
        epsilon: added to the std (a group with equal rewards gets advantages 0).
    """
    rewards = _groups(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not norm_adv_by_std_in_grpo:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + epsilon)


@register_adv_estimator("dr_grpo")
def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: ``r - mean_g`` (no std division, no length bias when paired with a constant norm)."""
    rewards = _groups(rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)


@register_adv_estimator("rloo")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: ``r_i - (sum_g - r_i) / (n - 1)``, the mean of the other samples as the baseline."""
    rewards = _groups(rewards)
    n = rewards.shape[1]
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)


@register_adv_estimator("batch")
def batch_scaled(rewards: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Batch-scaled: ``(r - mean_g) / (std(all rewards) + epsilon)``, unbiased std over all G·n.

    TRL's ``scale_rewards="batch"`` and DLER's batch-wise normalisation: the group mean is the
    baseline, the scale is shared by the whole batch (so easy and hard problems keep their
    relative weight).
    """
    rewards = _groups(rewards)
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(unbiased=True) + epsilon)


def beta_pdf(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The Beta(alpha, beta) density at ``p`` (any shape, values in [0, 1]); 0·log 0 taken as 0."""
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    alpha_t, beta_t = torch.tensor(alpha - 1, dtype=p.dtype), torch.tensor(beta - 1, dtype=p.dtype)
    return torch.exp(torch.xlogy(alpha_t, p) + torch.xlogy(beta_t, 1 - p) - log_norm)


def bnpo_parameters(p: torch.Tensor) -> tuple[float, float]:
    """BNPO's normalisation parameters ``(alpha, beta)`` from the groups' success rates ``p: [G]``.

    The rates are fitted with a Beta(a, b) by the method of moments over the batch (mean ``m``,
    unbiased variance ``v`` of the G rates): ``a = (m(1-m)/v - 1)·m``, ``b = (m(1-m)/v - 1)·(1-m)``;
    then ``alpha = max(1 + a/3, 1)``, ``beta = max(1 + b/3, 1)``. With one group, or when every
    group has the same rate (``v = 0``: the fit is degenerate), ``alpha = beta = 1``, a uniform
    density, so BNPO reduces to ``r - p`` (REINFORCE with the group baseline).
    """
    if p.numel() < 2:
        return 1.0, 1.0
    mean, var = p.mean().item(), p.var(unbiased=True).item()
    if not var > 0:
        return 1.0, 1.0
    spread = mean * (1 - mean) / var - 1
    return max(1 + spread * mean / 3, 1.0), max(1 + spread * (1 - mean) / 3, 1.0)


@register_adv_estimator("bnpo")
def bnpo(
    rewards: torch.Tensor, min_value: float = 0.0, max_value: float = 1.0, max_weight: float = 1e6
) -> torch.Tensor:
    """BNPO (Beta Normalization Policy Optimization, arXiv 2506.02864).

    ``A = (r - p) / f(p; alpha, beta)``: ``r`` the reward mapped affinely to [0, 1] by
    ``(r - min_value) / (max_value - min_value)``, ``p`` the group's mean of those (the Monte
    Carlo estimate of the problem's success rate), ``f`` the Beta(alpha, beta) density with the
    parameters of :func:`bnpo_parameters`, fitted to the batch's success rates (so the
    normalisation follows the policy as it changes). ``1 / f`` is clamped to ``[0, max_weight]``
    (it is infinite at ``p`` = 0 or 1 when ``alpha`` or ``beta`` > 1; ``r - p`` is 0 there).
    With ``alpha = beta = 3/2``, ``f(p) ∝ sqrt(p(1-p))``, the std of a binary reward: GRPO (with
    the biased std) up to a constant; with ``alpha = beta = 1`` it is ``r - p``.

    Sources: the paper's advantage ``(R - p(q)) / f_N(p(q); alpha, beta)`` (abstract and summaries
    of arXiv 2506.02864), and the authors' reference implementation
    (github.com/changyi7231/BNPO, ``compute_bnpo_outcome_advantage``) for the method-of-moments
    fit, ``alpha = 1 + a/3``, ``beta = 1 + b/3``, the clamps at 1, the affine map and the weight
    clamp. The paper's theorem deriving ``1 + a/3`` was not read (only its code); the degenerate
    ``v = 0`` case divides by zero there and is ``alpha = beta = 1`` here. The paper's advantage
    decomposition for multi-part rewards (BNPO per part, averaged) is not implemented.

    Args:
        rewards: ``[G, n]``, all within ``[min_value, max_value]``.
        min_value: the lowest reward the task gives (maps to 0).
        max_value: the highest reward the task gives (maps to 1).
        max_weight: upper clamp on ``1 / f``.

    Returns:
        ``[G, n]`` advantages (in the units of the [0, 1]-mapped reward), in the rewards' dtype.
    """
    rewards = _groups(rewards)
    if not max_value > min_value:
        raise ValueError(f"bnpo needs max_value > min_value, got {min_value}, {max_value}")
    scaled = (rewards.double() - min_value) / (max_value - min_value)
    if scaled.min() < -1e-9 or scaled.max() > 1 + 1e-9:
        raise ValueError(f"bnpo rewards must lie in [min_value, max_value] = [{min_value}, {max_value}]")
    scaled = scaled.clamp(0, 1)
    p = scaled.mean(dim=1, keepdim=True)
    alpha, beta = bnpo_parameters(p.squeeze(1))
    weight = (1 / beta_pdf(p, alpha, beta)).clamp(0, max_weight)
    return (weight * (scaled - p)).to(rewards.dtype)

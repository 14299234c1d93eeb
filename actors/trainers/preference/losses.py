"""Preference-optimisation losses on per-sequence log-probs: DPO, cDPO, robust DPO, hinge, IPO, SimPO.

**Inputs.** One row per pair: the policy's log-prob of the chosen and of the rejected completion,
*summed* over the completion's tokens (``[B]`` each), the frozen reference's sums (``[B]``; ``None``
for reference-free SimPO) and the completions' token counts (``[B]``; IPO and SimPO average by
them). With the log-ratios ``c = lp_c − ref_c``, ``r = lp_r − ref_r`` and ``Δ = c − r``:

- ``sigmoid`` (DPO): ``−logσ(βΔ)``; with ``label_smoothing`` ε > 0 the conservative cDPO
  ``−(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)`` (ε: the assumed probability that a label is flipped).
- ``robust`` (rDPO, Chowdhury et al. 2024): ``(−(1−ε)·logσ(βΔ) + ε·logσ(−βΔ)) / (1 − 2ε)``, the
  unbiased loss under label noise ε ∈ [0, 0.5).
- ``hinge`` (SLiC / RSO): ``relu(1 − βΔ)``.
- ``ipo``: ``(Δ̄ − 1/(2β))²`` with the per-token averaged ``Δ̄ = c / n_c − r / n_r`` (β is the
  IPO paper's τ).
- ``simpo`` (reference-free): ``−logσ(β·(lp_c / n_c − lp_r / n_r) − γ)``, cDPO-smoothed by ε.

**Names and defaults are TRL's.** ``DPOConfig``: ``beta=0.1``, ``label_smoothing=0.0`` (``[0, 0.5)``
for ``robust``), ``loss_type="sigmoid"``; ``DPOTrainer`` divides IPO's log-ratios by the completion
token counts. ``CPOConfig`` (``loss_type="simpo"``, ``cpo_alpha=0`` for plain SimPO):
``simpo_gamma=0.5``, ``beta=0.1``, log-probs averaged per token; TRL's paper index reproduces the
SimPO paper with ``beta=2.5``, ``simpo_gamma=1.375`` (γ/β = 0.55): with ``beta=0.1`` the margin γ
dominates, so set β for SimPO explicitly. TRL ≥ 0.29 dropped ε from ``sigmoid`` (it kept it for
``robust``; ``CPOTrainer`` keeps it for ``sigmoid`` and ``simpo``); here ``sigmoid`` keeps cDPO, and
ε = 0 is plain DPO. ``hinge`` and ``ipo`` do not read ε: a non-zero one is an error, not ignored.

**Metrics** (TRL's names, detached 0-d means over this call's pairs): ``rewards/chosen`` and
``rewards/rejected`` (the implicit rewards ``β·c`` and ``β·r`` from the *summed* log-ratios, as
``DPOTrainer`` logs them, IPO included; ``β·lp / n`` for SimPO, as ``CPOTrainer``),
``rewards/margins`` (their difference), ``rewards/accuracies`` (the fraction of pairs whose chosen
reward is strictly greater), ``logps/chosen`` and ``logps/rejected`` (the policy's summed log-probs,
for every loss type), and ``pairs`` (``B``, to weight the means when averaging micro-batches).

**Aggregation.** The loss is ``sum over pairs / global_pairs`` (default: this call's ``B``, i.e. the
batch mean). With micro-batches pass the step's pair count so the micro-batch losses add up to the
step's loss, as in :mod:`actors.trainers.rl.losses`; under DDP, which averages gradients over ``W``
workers, multiply each worker's loss by ``W``. :func:`nll_loss` does the same with ``global_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceBatch(NamedTuple):
    """A validated batch of pairs, every tensor ``[B]`` in one float dtype (at least float32)."""

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None
    ref_rejected_logps: torch.Tensor | None
    chosen_tokens: torch.Tensor | None
    rejected_tokens: torch.Tensor | None


#: ``fn(batch, *, beta, label_smoothing, simpo_gamma) -> (per-pair losses, chosen rewards, rejected
#: rewards)``, each ``[B]``
LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered loss and what it reads (checked before it is called)."""

    name: str
    fn: LossFn
    needs_reference: bool
    needs_tokens: bool
    uses_label_smoothing: bool


#: ``loss_type`` -> its :class:`PreferenceLoss`; add one with :func:`register_preference_loss`
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {}


def register_preference_loss(
    name: str,
    *,
    needs_reference: bool = True,
    needs_tokens: bool = False,
    uses_label_smoothing: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Register ``fn`` as ``loss_type=name`` (a decorator).

    Args:
        name: the ``loss_type`` (TRL's name where TRL has the loss).
        needs_reference: the loss reads ``ref_chosen_logps`` / ``ref_rejected_logps``.
        needs_tokens: the loss reads ``chosen_tokens`` / ``rejected_tokens``.
        uses_label_smoothing: the loss reads ``label_smoothing`` (otherwise it must be 0).
    """

    def decorator(fn: LossFn) -> LossFn:
        if name in PREFERENCE_LOSSES:
            raise ValueError(f"preference loss {name!r} is already registered")
        PREFERENCE_LOSSES[name] = PreferenceLoss(
            name, fn, needs_reference, needs_tokens, uses_label_smoothing
        )
        return fn

    return decorator


def _logratios(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lp_c − ref_c, lp_r − ref_r)``, each ``[B]``."""
    return (
        batch.policy_chosen_logps - batch.ref_chosen_logps,
        batch.policy_rejected_logps - batch.ref_rejected_logps,
    )


def _conservative(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``−(1−ε)·logσ(x) − ε·logσ(−x)`` (cDPO; ``−logσ(x)`` at ε = 0)."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@register_preference_loss("sigmoid", uses_label_smoothing=True)
def sigmoid_loss(batch: PreferenceBatch, *, beta: float, label_smoothing: float, simpo_gamma: float):
    """DPO ``−logσ(βΔ)``, conservative (cDPO) with ``label_smoothing`` ε > 0."""
    chosen, rejected = _logratios(batch)
    return _conservative(beta * (chosen - rejected), label_smoothing), beta * chosen, beta * rejected


@register_preference_loss("robust", uses_label_smoothing=True)
def robust_loss(batch: PreferenceBatch, *, beta: float, label_smoothing: float, simpo_gamma: float):
    """rDPO ``(−(1−ε)·logσ(βΔ) + ε·logσ(−βΔ)) / (1 − 2ε)`` (TRL ``loss_type="robust"``)."""
    chosen, rejected = _logratios(batch)
    logits = beta * (chosen - rejected)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses, beta * chosen, beta * rejected


@register_preference_loss("hinge")
def hinge_loss(batch: PreferenceBatch, *, beta: float, label_smoothing: float, simpo_gamma: float):
    """SLiC / RSO hinge ``relu(1 − βΔ)`` (β is the reciprocal of the margin)."""
    chosen, rejected = _logratios(batch)
    return torch.relu(1 - beta * (chosen - rejected)), beta * chosen, beta * rejected


@register_preference_loss("ipo", needs_tokens=True)
def ipo_loss(batch: PreferenceBatch, *, beta: float, label_smoothing: float, simpo_gamma: float):
    """IPO ``(Δ̄ − 1/(2β))²`` on per-token averaged log-ratios; rewards from the sums (as TRL logs them)."""
    chosen, rejected = _logratios(batch)
    delta = chosen / batch.chosen_tokens - rejected / batch.rejected_tokens
    return (delta - 1 / (2 * beta)) ** 2, beta * chosen, beta * rejected


@register_preference_loss("simpo", needs_reference=False, needs_tokens=True, uses_label_smoothing=True)
def simpo_loss(batch: PreferenceBatch, *, beta: float, label_smoothing: float, simpo_gamma: float):
    """SimPO ``−logσ(β·(avg_c − avg_r) − γ)`` on length-averaged log-probs; reference-free."""
    chosen = batch.policy_chosen_logps / batch.chosen_tokens
    rejected = batch.policy_rejected_logps / batch.rejected_tokens
    losses = _conservative(beta * (chosen - rejected) - simpo_gamma, label_smoothing)
    return losses, beta * chosen, beta * rejected


def _denominator(value, default, like: torch.Tensor, what: str) -> torch.Tensor:
    """A positive scalar denominator (an int, float or tensor, e.g. from an all-reduce)."""
    value = torch.as_tensor(default if value is None else value, dtype=like.dtype, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{what} must be a scalar, got shape {tuple(value.shape)}")
    if not value.item() > 0:
        raise ValueError(f"{what} must be positive, got {value.item()}")
    return value.reshape(())


def _check_vectors(named: dict[str, torch.Tensor | None], batch: int) -> None:
    """Every given tensor is ``[batch]``."""
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B], got {type(value).__name__}")
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(
                f"{name} must be [B] = [{batch}] like policy_chosen_logps, got {tuple(value.shape)}"
            )


def _check_pair(first: str, a, second: str, b, needed: bool, loss_type: str, what: str) -> None:
    """Both of a chosen/rejected pair of inputs, or neither; both when ``needed``."""
    if (a is None) != (b is None):
        missing = first if a is None else second
        raise ValueError(f"{missing} is None but its counterpart is given: pass both {first} and {second}")
    if needed and a is None:
        raise ValueError(f"loss_type {loss_type!r} needs {first} and {second} ({what}), got None")


def _check_tokens(name: str, tokens: torch.Tensor) -> None:
    if tokens.is_floating_point() and not torch.isfinite(tokens).all():
        raise ValueError(f"{name} must be finite token counts")
    if (tokens <= 0).any():
        raise ValueError(f"{name} must be positive token counts (a completion with no tokens?), got {tokens}")


def preference_loss(
    loss_type: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    global_pairs: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The preference loss ``loss_type`` of a batch of pairs (see the module docstring for the formulas).

    Computed in the inputs' float dtype, at least float32 (bf16 sums are upcast).

    Args:
        loss_type: a key of :data:`PREFERENCE_LOSSES`: ``sigmoid``, ``robust``, ``hinge``, ``ipo``,
            ``simpo``.
        policy_chosen_logps: the policy's log-prob of each chosen completion, summed over its
            tokens, ``[B]`` (with grad).
        policy_rejected_logps: the same for the rejected completions, ``[B]``.
        ref_chosen_logps: the reference's summed log-probs of the chosen completions, ``[B]``;
            needed by every loss but ``simpo``, which ignores it.
        ref_rejected_logps: the same for the rejected completions, ``[B]``.
        chosen_tokens: completion tokens of each chosen completion (> 0), ``[B]``; needed by
            ``ipo`` and ``simpo``.
        rejected_tokens: the same for the rejected completions, ``[B]``.
        beta: β (TRL default 0.1; τ for IPO; the SimPO paper uses 2–2.5).
        label_smoothing: ε in ``[0, 0.5)`` for ``sigmoid`` (cDPO), ``robust`` and ``simpo``; must be
            0 for ``hinge`` and ``ipo``.
        simpo_gamma: SimPO's target reward margin γ (TRL ``CPOConfig`` default 0.5); read only by
            ``simpo``.
        global_pairs: pairs of the whole step, the loss's denominator (default: ``B``).

    Returns:
        ``(loss, metrics)``: the scalar loss (sum of the per-pair losses / ``global_pairs``) and
        detached 0-d tensors ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
        ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` (means over this call's
        pairs) and ``pairs`` (``B``).

    Raises:
        ValueError: an unknown ``loss_type``, a tensor that is not ``[B]``, an empty batch, missing
            reference log-probs or token counts the loss needs, non-positive token counts, β ≤ 0,
            or ε outside its range.
    """
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {sorted(PREFERENCE_LOSSES)}")
    spec = PREFERENCE_LOSSES[loss_type]
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if spec.uses_label_smoothing:
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing must lie in [0, 0.5) for loss_type {loss_type!r}, got {label_smoothing}"
            )
    elif label_smoothing != 0.0:
        raise ValueError(
            f"loss_type {loss_type!r} does not use label_smoothing; set it to 0, got {label_smoothing}"
        )
    if not math.isfinite(simpo_gamma):
        raise ValueError(f"simpo_gamma must be finite, got {simpo_gamma}")

    if not isinstance(policy_chosen_logps, torch.Tensor) or policy_chosen_logps.dim() != 1:
        shape = tuple(policy_chosen_logps.shape) if isinstance(policy_chosen_logps, torch.Tensor) else None
        raise ValueError(
            f"policy_chosen_logps must be a 1-d tensor [B], got {shape or type(policy_chosen_logps)}"
        )
    if policy_rejected_logps is None:
        raise ValueError("policy_rejected_logps is required, got None")
    size = policy_chosen_logps.shape[0]
    if size == 0:
        raise ValueError("empty batch: policy_chosen_logps has no pairs")
    _check_vectors(
        {
            "policy_rejected_logps": policy_rejected_logps,
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
            "chosen_tokens": chosen_tokens,
            "rejected_tokens": rejected_tokens,
        },
        size,
    )
    for name, value in (
        ("policy_chosen_logps", policy_chosen_logps),
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if value is not None and not value.is_floating_point():
            raise ValueError(f"{name} must be floating-point log-probs, got {value.dtype}")
    _check_pair(
        "ref_chosen_logps",
        ref_chosen_logps,
        "ref_rejected_logps",
        ref_rejected_logps,
        spec.needs_reference,
        loss_type,
        "reference log-probs; only 'simpo' is reference-free",
    )
    _check_pair(
        "chosen_tokens",
        chosen_tokens,
        "rejected_tokens",
        rejected_tokens,
        spec.needs_tokens,
        loss_type,
        "completion token counts, to average the log-probs per token",
    )
    if chosen_tokens is not None:
        _check_tokens("chosen_tokens", chosen_tokens)
        _check_tokens("rejected_tokens", rejected_tokens)

    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)

    def cast(value: torch.Tensor | None) -> torch.Tensor | None:
        return None if value is None else value.to(dtype)

    batch = PreferenceBatch(
        cast(policy_chosen_logps),
        cast(policy_rejected_logps),
        cast(ref_chosen_logps) if spec.needs_reference else None,
        cast(ref_rejected_logps) if spec.needs_reference else None,
        cast(chosen_tokens) if spec.needs_tokens else None,
        cast(rejected_tokens) if spec.needs_tokens else None,
    )
    losses, chosen_rewards, rejected_rewards = spec.fn(
        batch, beta=beta, label_smoothing=label_smoothing, simpo_gamma=simpo_gamma
    )
    loss = losses.sum() / _denominator(global_pairs, size, losses, "global_pairs")
    with torch.no_grad():
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).to(dtype).mean(),
            "logps/chosen": batch.policy_chosen_logps.detach().mean(),
            "logps/rejected": batch.policy_rejected_logps.detach().mean(),
            "pairs": torch.tensor(size, device=losses.device),
        }
    return loss, metrics


def nll_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_tokens: torch.Tensor,
    *,
    global_tokens: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The NLL of the chosen completions per token: ``sum(−lp_c) / global_tokens``.

    A token mean over the batch (TRL's ``CPOTrainer`` ``nll_loss``, a cross-entropy over every chosen
    token; RPO's term), not a mean of per-sequence means. Add it as ``α · nll_loss(...)``
    (``cpo_alpha`` / ``rpo_alpha`` in TRL).

    Args:
        chosen_logps_sum: the policy's summed log-probs of the chosen completions, ``[B]``.
        chosen_tokens: their token counts (> 0), ``[B]``.
        global_tokens: chosen tokens of the whole step (default: ``chosen_tokens.sum()``).

    Returns:
        The scalar loss, in ``chosen_logps_sum``'s float dtype (at least float32).
    """
    if not isinstance(chosen_logps_sum, torch.Tensor) or chosen_logps_sum.dim() != 1:
        raise ValueError("chosen_logps_sum must be a 1-d tensor [B]")
    if not chosen_logps_sum.is_floating_point():
        raise ValueError(f"chosen_logps_sum must be floating-point log-probs, got {chosen_logps_sum.dtype}")
    if chosen_logps_sum.shape[0] == 0:
        raise ValueError("empty batch: chosen_logps_sum has no rows")
    _check_vectors({"chosen_tokens": chosen_tokens}, chosen_logps_sum.shape[0])
    _check_tokens("chosen_tokens", chosen_tokens)
    logps = chosen_logps_sum.to(torch.promote_types(chosen_logps_sum.dtype, torch.float32))
    denominator = _denominator(global_tokens, chosen_tokens.sum(), logps, "global_tokens")
    return -logps.sum() / denominator

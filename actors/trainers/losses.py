"""Distillation losses between the verifier's top-k next-token distributions and a student's logits.

The teacher signal is stored as the verifier's ``k`` most likely next tokens and their
probabilities, not the full vocabulary. Both distributions are compared on the same ``k + 1``
outcomes: the teacher's ``k`` tokens, and a **tail bucket** holding all the remaining mass (the
teacher's ``1 - sum(topk_probs)``; the student's probability of every other token, computed
exactly from its full logits). We chose the tail bucket over renormalising over the top-k:

- every divergence stays finite and proper, reverse KL included (renormalising would give the
  teacher zero mass outside its top-k, so any student mass there would cost infinity or nothing);
- a student that spreads mass over tokens the teacher never ranks is charged for it;
- with ``k = V`` it is the exact full-vocabulary divergence, and for smaller ``k`` it is a lower
  bound of it (merging outcomes never increases an f-divergence).

``tail=False`` renormalises both over the teacher's top-k instead (the usual "top-k KD").

The divergences (DistillSpec, GKD) with teacher ``p`` and student ``q``:

- ``fkl``: forward KL ``KL(p || q)`` (mode covering);
- ``rkl``: reverse KL ``KL(q || p)`` (mode seeking); ``p`` is floored at :data:`EPS` there;
- ``jsd``: generalised Jensen-Shannon ``β KL(p || m) + (1 - β) KL(q || m)``, ``m = β p + (1 - β) q``,
  ``0 < β < 1`` (β = 0.5 is the symmetric JSD; it tends to 0 at either end, so use
  ``fkl``/``rkl`` there);
- ``tvd``: total variation ``½ Σ |p - q|`` (the greedy/speculative acceptance rate is
  ``1 - TVD`` for sampling, which is why DistillSpec uses it).

Each returns the mean over masked positions. New losses are registered with :func:`register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: floor on teacher probabilities where a logarithm of them is taken (reverse KL)
EPS = 1e-8

LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Register a per-position divergence ``fn(p [N, K], log_q [N, K], beta) -> [N]`` under ``name``."""

    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return wrap


def project(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor, tail: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student distributions over the teacher's top-k (+ the tail bucket).

    Args:
        student_logits: ``[N, V]`` the student's next-token logits.
        topk_ids: ``[N, k]`` int64, the teacher's most likely next tokens.
        topk_probs: ``[N, k]`` their teacher probabilities (sum <= 1).
        tail: add the tail bucket (see the module docstring); False renormalises over the top-k.

    Returns:
        ``p``: ``[N, K]`` teacher probabilities and ``log_q``: ``[N, K]`` student log-probabilities,
        ``K = k + 1`` with the tail last, or ``K = k`` without it (or when ``k = V``: an empty
        tail). Both rows sum to 1.
    """
    logits = student_logits.float()
    p = topk_probs.float()
    if not tail or topk_ids.shape[-1] >= logits.shape[-1]:  # renormalised, or no tail to hold
        picked = logits.gather(-1, topk_ids)
        return p / p.sum(-1, keepdim=True).clamp_min(EPS), picked.log_softmax(-1)
    log_z = logits.logsumexp(-1, keepdim=True)  # [N, 1]
    log_q_top = logits.gather(-1, topk_ids) - log_z  # [N, k]
    # The tail's log mass, exactly: logsumexp over the logits outside the top-k.
    rest = logits.scatter(-1, topk_ids, float("-inf"))
    log_q_tail = rest.logsumexp(-1, keepdim=True) - log_z  # [N, 1]
    p_tail = (1.0 - p.sum(-1, keepdim=True)).clamp_min(0.0)
    return torch.cat([p, p_tail], -1), torch.cat([log_q_top, log_q_tail], -1)


def _kl(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row ``[N]``; terms with ``p == 0`` count 0."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


@register_loss("fkl")
def forward_kl(p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``KL(p || q)`` per position ``[N]``."""
    return _kl(p, p.clamp_min(EPS).log(), log_q)


@register_loss("rkl")
def reverse_kl(p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``KL(q || p)`` per position ``[N]``, with ``p`` floored at :data:`EPS`."""
    return _kl(log_q.exp(), log_q, p.clamp_min(EPS).log())


@register_loss("jsd")
def generalised_jsd(p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``β KL(p || m) + (1 - β) KL(q || m)`` with ``m = β p + (1 - β) q``, per position ``[N]``."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta} (use fkl or rkl for the ends)")
    q = log_q.exp()
    m = beta * p + (1.0 - beta) * q
    log_m = m.clamp_min(EPS).log()
    return beta * _kl(p, p.clamp_min(EPS).log(), log_m) + (1.0 - beta) * _kl(q, log_q, log_m)


@register_loss("tvd")
def total_variation(p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``½ Σ |p - q|`` per position ``[N]``."""
    return 0.5 * (p - log_q.exp()).abs().sum(-1)


def distill_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    mask: torch.Tensor,
    loss: str = "fkl",
    beta: float = 0.5,
    tail: bool = True,
) -> torch.Tensor:
    """Mean divergence over the positions where ``mask`` is set.

    Args:
        student_logits: ``[..., V]`` the student's logits at every position.
        topk_ids: ``[..., k]`` int64, the teacher's top-k next tokens at those positions.
        topk_probs: ``[..., k]`` their teacher probabilities.
        mask: ``[...]`` bool or 0/1, the positions that carry teacher signal.
        loss: ``fkl``, ``rkl``, ``jsd`` or ``tvd`` (or any registered name).
        beta: the JSD mixture weight on the teacher.
        tail: compare with a tail bucket (default) or renormalised over the top-k.

    Returns:
        A scalar: the sum of per-position divergences over the masked positions divided by their
        number (0 when none is masked in).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
    vocab, k = student_logits.shape[-1], topk_ids.shape[-1]
    keep = mask.reshape(-1).bool()
    logits = student_logits.reshape(-1, vocab)[keep]
    p, log_q = project(logits, topk_ids.reshape(-1, k)[keep], topk_probs.reshape(-1, k)[keep], tail)
    per_position = LOSSES[loss](p, log_q, beta)  # [M]
    return per_position.sum() / max(int(keep.sum()), 1)

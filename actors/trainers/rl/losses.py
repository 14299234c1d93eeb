"""The RL policy loss (PPO-clip, clip-higher, dual clip), its aggregation, KL estimators, log-probs.

**Aggregation over micro-batches and workers.** Every ``loss_agg_mode`` is a *sum* of per-token
or per-sequence terms divided by a denominator that the caller fixes for the whole step, so the
losses of the micro-batches (and workers) of one step **add up** to the loss of the whole batch,
and so do their gradients:

- ``token-mean`` (default): ``sum(masked token losses) / global_tokens``; ``global_tokens`` is
  the number of masked tokens of the whole step (all micro-batches, all workers: all-reduce it
  before the first micro-batch). Default: this call's ``mask.sum()``, right only for one call.
- ``seq-mean-token-mean``: ``sum over sequences of (the sequence's token mean) / global_seqs``.
- ``seq-mean-token-sum-norm`` (Dr. GRPO): ``sum over sequences of (token sum / max_tokens) /
  global_seqs``; ``max_tokens`` must be a constant of the run (``max_new_tokens``), not the
  padded width of one micro-batch (the default, ``mask.shape[-1]``, is right only for one call).

``global_seqs`` is the number of sequences of the whole step (default: this call's ``B``).
Call ``loss.backward()`` on each micro-batch's loss with these global denominators and do not
divide by the number of micro-batches. Under DDP, which *averages* gradients over ``W``
workers, multiply each worker's loss by ``W`` (the sum over workers is what the global
denominator expects); ZeRO-2 averages the same way.
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
#: bound on |log ρ| before exponentiating (veRL clamps the log-ratio to [-20, 20] the same way)
LOG_RATIO_CLAMP = 20.0


def _denominator(value, default, like: torch.Tensor) -> torch.Tensor:
    """A positive denominator (an int, float or tensor from an all-reduce)."""
    value = torch.as_tensor(default if value is None else value, dtype=like.dtype, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"a loss denominator must be a scalar, got shape {tuple(value.shape)}")
    # an empty batch has a zero sum: keep 0 / 0 from becoming NaN
    return value.reshape(()).clamp(min=1e-12)


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    global_tokens: int | float | torch.Tensor | None = None,
    global_seqs: int | float | torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Aggregate per-token losses into one scalar (see the module docstring for the modes).

    Args:
        loss_mat: per-token losses, ``[B, T]``.
        mask: which tokens are actions, ``[B, T]`` (bool or 0/1).
        loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
        global_tokens: masked tokens of the whole step (``token-mean``).
        global_seqs: sequences of the whole step (``seq-*`` modes).
        max_tokens: the constant per-sequence normaliser of ``seq-mean-token-sum-norm``.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; known: {list(LOSS_AGG_MODES)}")
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(
            f"loss_mat and mask must both be [B, T], got {tuple(loss_mat.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    # where(), not a product: a non-finite value at a padded position must not leak into the sum
    masked = torch.where(mask, loss_mat, torch.zeros_like(loss_mat))
    if loss_agg_mode == "token-mean":
        return masked.sum() / _denominator(global_tokens, mask.sum(), masked)
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1)
    else:
        per_seq = masked.sum(-1) / _denominator(max_tokens, mask.shape[-1], masked)
    return per_seq.sum() / _denominator(global_seqs, mask.shape[0], masked)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    global_tokens: int | float | torch.Tensor | None = None,
    global_seqs: int | float | torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip policy-gradient loss with separate low/high clip and dual clip.

    Per token, with ``ρ = exp(logp - old_logp)`` (log-ratio clamped to ±20):
    ``l = max(-A·ρ, -A·clip(ρ, 1 - clip_ratio_low, 1 + clip_ratio_high))``, and for ``A < 0`` the
    dual clip ``l = min(l, -A·clip_ratio_c)`` bounds the loss of a token whose ratio exploded.

    Args:
        logp: log-probs of the sampled tokens under the current policy, ``[B, T]`` (with grad).
        old_logp: log-probs under the policy that sampled them, ``[B, T]`` (detached here).
        advantages: per sequence ``[B]`` or per token ``[B, T]`` (detached here).
        mask: action tokens, ``[B, T]`` (bool or 0/1); the first EOS is an action.
        clip_ratio_low: ``ε_low`` (veRL ``actor.clip_ratio_low``).
        clip_ratio_high: ``ε_high`` (DAPO clip-higher uses 0.28).
        clip_ratio_c: dual-clip constant ``c > 1`` (veRL ``actor.clip_ratio_c``).
        loss_agg_mode, global_tokens, global_seqs, max_tokens: see :func:`agg_loss`.

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached 0-d tensors ``clip_ratio/low``
        (``A < 0`` and ``ρ < 1 - ε_low``), ``clip_ratio/high`` (``A > 0`` and ``ρ > 1 + ε_high``),
        ``clip_ratio/dual`` (``A < 0`` and the dual clip bound the loss, i.e. ``ρ > c``) as
        fractions of this call's masked tokens, and ``tokens`` (that count, to weight the
        fractions when averaging micro-batches).
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, old_logp, mask must all be [B, T], got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    advantages = advantages.detach()
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None]
    elif advantages.shape != logp.shape:
        raise ValueError(
            f"advantages must be [B] or [B, T], got {tuple(advantages.shape)} for logp {tuple(logp.shape)}"
        )
    log_ratio = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = torch.maximum(unclipped, -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high))
    dual_bound = -advantages * clip_ratio_c
    per_token = torch.where(advantages < 0, torch.minimum(clipped, dual_bound), clipped)
    loss = agg_loss(
        per_token,
        mask,
        loss_agg_mode,
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        max_tokens=max_tokens,
    )
    with torch.no_grad():
        mask = mask.bool()
        tokens = mask.sum()
        adv = advantages.expand_as(ratio)

        def fraction(active: torch.Tensor) -> torch.Tensor:
            return (active & mask).sum() / tokens.clamp(min=1)

        metrics = {
            "clip_ratio/low": fraction((adv < 0) & (ratio < 1 - clip_ratio_low)),
            "clip_ratio/high": fraction((adv > 0) & (ratio > 1 + clip_ratio_high)),
            "clip_ratio/dual": fraction((adv < 0) & (dual_bound < clipped)),
            "tokens": tokens,
        }
    return loss, metrics


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k1 KL estimator ``logp - ref_logp`` per token (unbiased for KL(π‖π_ref), high variance)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimator (veRL ``low_var_kl``) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Non-negative, unbiased for KL(π‖π_ref) on samples of π, low variance (Schulman, "Approximating
    KL divergence"). Clamped as veRL does: ``d`` to ``[-20, 20]`` before the exponential, the
    result to ``[-10, 10]`` (the gradient is 0 where the clamp is active).

    Args:
        logp: ``[B, T]`` log-probs under the policy.
        ref_logp: ``[B, T]`` log-probs under the frozen reference.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    *,
    chunk_rows: int = 1024,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``tokens`` and the entropy under ``softmax(logits / temperature)``.

    ``logits[:, t]`` must be the logits that predicted ``tokens[:, t]`` (shift before calling).
    Computed ``chunk_rows`` positions at a time in float32 (bf16/fp16 logits are upcast one chunk
    at a time; nothing in float64, no full ``[B, T, V]`` log-softmax copy): ``logp = x_tok - lse``,
    ``entropy = lse - sum(softmax(x) · x)`` with ``x = logits / T``.

    Args:
        logits: ``[B, T, V]``.
        tokens: ``[B, T]`` token ids.
        temperature: the sampling temperature the rollout used (> 0).
        chunk_rows: positions per chunk (bounds the float32 working set to ``chunk_rows × V``).
        entropy_grad: keep the entropy differentiable (needed for an entropy bonus); False saves
            the memory of its graph when the entropy is only logged.

    Returns:
        ``(logp [B, T], entropy [B, T])`` in float32 (or float64 for float64 logits).
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and tokens [B, T], got {tuple(logits.shape)}, {tuple(tokens.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (greedy has no log-probs to train on), got {temperature}")
    batch, steps, vocab = logits.shape
    flat, ids = logits.reshape(-1, vocab), tokens.reshape(-1, 1).long()
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logps, entropies = [], []
    for start in range(0, flat.shape[0], chunk_rows):
        x = flat[start : start + chunk_rows].to(dtype) / temperature
        lse = torch.logsumexp(x, dim=-1)
        logps.append(x.gather(-1, ids[start : start + chunk_rows]).squeeze(-1) - lse)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropies.append(lse - (torch.softmax(x, dim=-1) * x).sum(-1))
    logp = torch.cat(logps).reshape(batch, steps) if logps else flat.new_zeros(batch, steps, dtype=dtype)
    entropy = torch.cat(entropies).reshape(batch, steps) if entropies else logp.clone()
    return logp, entropy

"""The RL policy loss by hand, aggregation invariance over micro-batches, KL estimators, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from actors.trainers.rl.losses import agg_loss, kl_k1, kl_k3, policy_loss, token_logprobs

# one token each: clip-high (A > 0, ρ = 1.5), clip-low (A < 0, ρ = 0.5), unclipped (ρ = 1.1),
# dual clip (A < 0, ρ = 4)
RATIOS = torch.tensor([[1.5, 0.5, 1.1, 4.0]], dtype=torch.float64)
ADVANTAGES = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)


def test_policy_loss_by_hand():
    logp = RATIOS.log().requires_grad_()
    loss, metrics = policy_loss(
        logp, torch.zeros_like(logp), ADVANTAGES, torch.ones_like(logp, dtype=torch.bool)
    )
    # max(-Aρ, -A clip(ρ, 0.8, 1.2)) per token: -1.2, 0.8, -1.1, min(4, 3) = 3
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 + 3.0) / 4)
    for key in ("clip_ratio/low", "clip_ratio/high", "clip_ratio/dual"):
        assert metrics[key].item() == pytest.approx(0.25), key
    assert metrics["tokens"].item() == 4
    loss.backward()
    # only the unclipped token has a gradient: d(-A ρ)/d logp = -A ρ, over 4 tokens
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, -1.1 / 4, 0.0]], dtype=torch.float64))


def test_clip_higher_and_dual_clip_constant():
    logp = RATIOS.log()
    loss, metrics = policy_loss(
        logp,
        torch.zeros_like(logp),
        ADVANTAGES,
        torch.ones_like(logp),
        clip_ratio_high=0.28,
        clip_ratio_c=5.0,
    )
    # -min(1.5, 1.28), 0.8, -1.1, min(4, 5) = 4: the dual clip no longer binds
    assert loss.item() == pytest.approx((-1.28 + 0.8 - 1.1 + 4.0) / 4)
    assert metrics["clip_ratio/dual"].item() == 0.0 and metrics["clip_ratio/high"].item() == 0.25
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(logp, logp, ADVANTAGES, torch.ones_like(logp), clip_ratio_c=1.0)


def test_mask_excludes_padding_and_sequence_advantages_broadcast():
    logp = torch.tensor([[0.1, -0.2, 1e4], [0.3, -1e4, 1e4]], requires_grad=True)  # garbage where masked
    old = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss(
        logp, old, adv, mask, clip_ratio_low=10.0, clip_ratio_high=10.0, clip_ratio_c=100.0
    )
    expected = (-math.exp(0.1) - math.exp(-0.2) + math.exp(0.3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["tokens"].item() == 3
    loss.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[~mask] == 0).all()
    per_token, _ = policy_loss(logp, old, adv[:, None].expand(2, 3), mask)
    assert per_token.item() == pytest.approx(policy_loss(logp, old, adv, mask)[0].item())


def test_aggregation_modes_by_hand():
    # ratio 1, so the token loss is -A: seq 0 has 2 tokens of -1, seq 1 one token of +3
    loss_mat = torch.tensor([[-1.0, -1.0, 7.0], [3.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert agg_loss(loss_mat, mask, "token-mean").item() == pytest.approx(1 / 3)
    assert agg_loss(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(1.0)
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", max_tokens=4).item() == pytest.approx(0.125)
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == pytest.approx((-2 / 3 + 1) / 2)
    assert agg_loss(loss_mat, mask, "token-mean", global_tokens=torch.tensor(6)).item() == pytest.approx(
        1 / 6
    )
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'token-sum'"):
        agg_loss(loss_mat, mask, "token-sum")


def _tiny_policy_batch(seed: int = 0):
    """A linear policy over 11 tokens and a batch of 8 ragged completions (1 to 7 action tokens)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(8, 7, 5, generator=gen)
    weight = torch.randn(5, 11, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 11, (8, 7), generator=gen)
    lengths = torch.tensor([1, 7, 2, 6, 3, 3, 7, 1])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    with torch.no_grad():  # the sampling policy was a bit different, so some ratios clip
        old_logp, _ = token_logprobs(features @ (weight + 0.3 * torch.randn(5, 11, generator=gen)), tokens)
    advantages = torch.randn(8, generator=gen)
    return features, weight, tokens, mask, old_logp, advantages


def _loss_and_grad(rows_per_micro: int, mode: str, global_counts: bool):
    features, weight, tokens, mask, old_logp, advantages = _tiny_policy_batch()
    total = None
    for start in range(0, 8, rows_per_micro):
        rows = slice(start, start + rows_per_micro)
        logp, _ = token_logprobs(features[rows] @ weight, tokens[rows], temperature=0.7)
        counts = dict(global_tokens=mask.sum(), global_seqs=8) if global_counts else {}
        loss, _ = policy_loss(
            logp, old_logp[rows], advantages[rows], mask[rows], loss_agg_mode=mode, max_tokens=7, **counts
        )
        if not global_counts:  # the naive gradient accumulation: mean of micro-batch means
            loss = loss / (8 // rows_per_micro)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total, weight.grad


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_with_global_counts_equal_the_whole_batch(mode):
    whole_loss, whole_grad = _loss_and_grad(8, mode, global_counts=True)
    for rows in (1, 2, 4):  # 8, 4 and 2 micro-batches (or workers whose gradients are summed)
        loss, grad = _loss_and_grad(rows, mode, global_counts=True)
        assert torch.allclose(loss, whole_loss, atol=1e-6) and torch.allclose(grad, whole_grad, atol=1e-6)


def test_naive_per_micro_batch_token_mean_differs():
    whole_loss, whole_grad = _loss_and_grad(8, "token-mean", global_counts=True)
    naive_loss, naive_grad = _loss_and_grad(2, "token-mean", global_counts=False)
    assert not torch.allclose(naive_loss, whole_loss, atol=1e-4)
    assert not torch.allclose(naive_grad, whole_grad, atol=1e-4)


def test_kl_estimators():
    logp = torch.tensor([0.0, 1.0, 0.5, 0.0, -60.0])
    ref = torch.tensor([1.0, 0.0, 0.5, -60.0, 0.0])
    k3 = kl_k3(logp, ref)
    assert k3[0].item() == pytest.approx(math.e - 2)  # d = 1: e - 1 - 1
    assert k3[1].item() == pytest.approx(math.exp(-1))  # d = -1: e^-1 + 1 - 1
    assert k3[2].item() == 0.0
    assert k3[3].item() == 10.0 and k3[4].item() == 10.0, "clamped to [-10, 10] as veRL's low_var_kl"
    assert (k3 >= 0).all()
    assert torch.equal(kl_k1(logp, ref), logp - ref)
    # d is clamped before exp(): a huge gap gives a zero gradient, not inf * 0 = NaN
    far = torch.tensor([-1000.0], requires_grad=True)
    kl_k3(far, torch.zeros(1)).sum().backward()
    assert torch.isfinite(far.grad).all()


def test_token_logprobs_match_log_softmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 17, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 17, (3, 5), generator=gen)
    logp, entropy = token_logprobs(logits, tokens, temperature=0.7, chunk_rows=4)
    reference = torch.log_softmax(logits / 0.7, dim=-1)
    assert torch.allclose(logp, reference.gather(-1, tokens[..., None]).squeeze(-1))
    assert torch.allclose(entropy, -(reference.exp() * reference).sum(-1))
    (grad,) = torch.autograd.grad((logp.sum() + entropy.sum()), logits)
    (grad_ref,) = torch.autograd.grad(
        reference.gather(-1, tokens[..., None]).sum() - (reference.exp() * reference).sum(), logits
    )
    assert torch.allclose(grad, grad_ref)
    half, _ = token_logprobs(logits.detach().to(torch.bfloat16), tokens, temperature=0.7)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tokens, temperature=0.0)

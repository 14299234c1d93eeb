"""Advantage estimators: hand computations, the registry, BNPO against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from actors.trainers.rl.advantages import (
    ADV_ESTIMATORS,
    beta_pdf,
    bnpo_parameters,
    compute_advantages,
    register_adv_estimator,
)


def test_grpo_hand_value():
    adv = compute_advantages("grpo", torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[0.866, -0.866, -0.866, 0.866]]), atol=1e-3)
    # the biased std would give ±1.0: the unbiased one is what veRL and TRL use
    assert not torch.allclose(adv.abs(), torch.ones(1, 4), atol=1e-2)


def test_grpo_groups_are_independent_and_constant_groups_are_zero():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1], [3.0, 1.0, 2.0, 2.0]])
    adv = compute_advantages("grpo", rewards)
    assert torch.equal(adv[1], torch.zeros(4))
    assert torch.allclose(adv[2], torch.tensor([1.0, -1.0, 0.0, 0.0]) / math.sqrt(2 / 3), atol=1e-5)
    centred = compute_advantages("grpo", rewards, norm_adv_by_std_in_grpo=False)
    assert torch.allclose(centred, rewards - rewards.mean(1, keepdim=True))


def test_dr_grpo_rloo_batch_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(
        compute_advantages("dr_grpo", rewards), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.25] * 3 + [-0.75]])
    )
    # rloo: r_i - mean of the other three
    expected = torch.tensor([[1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3], [1 - 2 / 3, 1 - 2 / 3, 1 - 2 / 3, -1.0]])
    assert torch.allclose(compute_advantages("rloo", rewards), expected)
    # batch: centred per group, scaled by the std of all 8 rewards (5 ones, 3 zeros)
    batch_std = math.sqrt((5 * (1 - 5 / 8) ** 2 + 3 * (5 / 8) ** 2) / 7)
    assert torch.allclose(
        compute_advantages("batch", rewards), (rewards - rewards.mean(1, keepdim=True)) / batch_std, atol=1e-5
    )


def test_bnpo_hand_value():
    # success rates p = 0.25 and 0.75: mean 0.5, unbiased variance 0.125, so a = b = 0.5,
    # alpha = beta = 1 + 0.5/3 = 7/6, and A = (r - p) / Beta(7/6, 7/6).pdf(p)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    alpha = 7 / 6
    assert bnpo_parameters(torch.tensor([0.25, 0.75])) == pytest.approx((alpha, alpha))
    log_b = 2 * math.lgamma(alpha) - math.lgamma(2 * alpha)
    pdf = math.exp((alpha - 1) * math.log(0.25) + (alpha - 1) * math.log(0.75) - log_b)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.25, 0.25, 0.25, -0.75]]) / pdf
    assert torch.allclose(compute_advantages("bnpo", rewards), expected, atol=1e-6)


def test_bnpo_reduces_to_reinforce_and_grpo():
    # every group at the same rate (or one group): alpha = beta = 1, A = r - p
    same = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(compute_advantages("bnpo", same), compute_advantages("dr_grpo", same))
    assert torch.allclose(compute_advantages("bnpo", same[:1]), compute_advantages("dr_grpo", same[:1]))
    # alpha = beta = 3/2: 1/f(p) = B(3/2, 3/2) / sqrt(p(1-p)), GRPO's biased std up to a constant
    p = torch.tensor([0.25, 0.5], dtype=torch.float64)
    ratio = torch.sqrt(p * (1 - p)) / beta_pdf(p, 1.5, 1.5)
    assert torch.allclose(ratio, torch.full_like(ratio, math.pi / 8))


def test_bnpo_rescales_other_reward_ranges():
    rewards = torch.tensor([[3.0, -1.0, -1.0, -1.0], [3.0, 3.0, 3.0, -1.0]])  # knights-like scale
    scaled = compute_advantages("bnpo", rewards, min_value=-1.0, max_value=3.0)
    binary = compute_advantages("bnpo", (rewards + 1) / 4)
    assert torch.allclose(scaled, binary)
    with pytest.raises(ValueError, match="min_value, max_value"):
        compute_advantages("bnpo", rewards)


def test_registry_errors():
    with pytest.raises(ValueError, match="'ppo'.*known: .*grpo"):
        compute_advantages("ppo", torch.zeros(2, 4))
    with pytest.raises(ValueError, match="n >= 2"):
        compute_advantages("grpo", torch.zeros(8, 1))
    with pytest.raises(ValueError, match="'norm_by_std'"):
        compute_advantages("grpo", torch.zeros(2, 4), norm_by_std=False)
    with pytest.raises(ValueError, match=r"\[G, n\]"):
        compute_advantages("grpo", torch.zeros(8))
    assert {"grpo", "dr_grpo", "rloo", "batch", "bnpo"} <= set(ADV_ESTIMATORS)


def test_register_a_new_estimator():
    @register_adv_estimator("test_sign")
    def sign(rewards: torch.Tensor) -> torch.Tensor:
        return torch.sign(rewards - rewards.mean(1, keepdim=True))

    try:
        assert torch.equal(
            compute_advantages("test_sign", torch.tensor([[1.0, 0.0]])), torch.tensor([[1.0, -1.0]])
        )
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("test_sign")(sign)
    finally:
        del ADV_ESTIMATORS["test_sign"]

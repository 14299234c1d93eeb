"""The preference losses by hand (DPO, cDPO, robust, hinge, IPO, SimPO), their metrics, NLL, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from actors.trainers.preference.losses import (
    PREFERENCE_LOSSES,
    nll_loss,
    preference_loss,
    register_preference_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """``−logσ(−x) = log(1 + e^x)``, written out."""
    return math.log(1 + math.exp(x))


# two pairs: log-ratios c = lp_c − ref_c = [1, −2], r = lp_r − ref_r = [−1, 1], Δ = [2, −3]
POLICY_CHOSEN = t(-10.0, -20.0)
POLICY_REJECTED = t(-12.0, -15.0)
REF_CHOSEN = t(-11.0, -18.0)
REF_REJECTED = t(-11.0, -16.0)
# token counts: averaged log-ratios c / n_c = [0.25, −0.4], r / n_r = [−0.5, 0.1]
CHOSEN_TOKENS = torch.tensor([4, 5])
REJECTED_TOKENS = torch.tensor([2, 10])
PAIRS = (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)


def test_registry_holds_the_trl_names():
    assert sorted(PREFERENCE_LOSSES) == ["hinge", "ipo", "robust", "sigmoid", "simpo"]
    assert not PREFERENCE_LOSSES["simpo"].needs_reference
    assert all(PREFERENCE_LOSSES[name].needs_reference for name in ("sigmoid", "robust", "hinge", "ipo"))


def test_dpo_issue_example():
    # the issue's acceptance case: β = 0.1, Δ = 2 → −logσ(0.2) = log(1 + e^−0.2) ≈ 0.5981
    loss, _ = preference_loss("sigmoid", t(0.0), t(-2.0), t(0.0), t(0.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert loss.item() == pytest.approx(0.5981, abs=1e-4)


def test_sigmoid_by_hand_with_metrics_and_gradient():
    policy_chosen = POLICY_CHOSEN.clone().requires_grad_()
    loss, metrics = preference_loss("sigmoid", policy_chosen, *PAIRS[1:4])
    # β = 0.1 (TRL default): βΔ = [0.2, −0.3]
    assert loss.item() == pytest.approx((softplus(-0.2) + softplus(0.3)) / 2)
    # rewards β·c = [0.1, −0.2], β·r = [−0.1, 0.1]
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.0)
    assert metrics["rewards/margins"].item() == pytest.approx((0.2 - 0.3) / 2)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)
    assert metrics["logps/chosen"].item() == pytest.approx(-15.0)
    assert metrics["logps/rejected"].item() == pytest.approx(-13.5)
    assert metrics["pairs"].item() == 2
    assert all(not value.requires_grad and value.dim() == 0 for value in metrics.values())
    loss.backward()
    # d/d lp_c of −logσ(βΔ) / B = −β·σ(−βΔ) / B, σ(−x) = 1 / (1 + e^x)
    expected = [-0.1 / (1 + math.exp(0.2)) / 2, -0.1 / (1 + math.exp(-0.3)) / 2]
    assert policy_chosen.grad.tolist() == pytest.approx(expected)


def test_beta_scales_the_logits():
    loss, metrics = preference_loss("sigmoid", *PAIRS[:4], beta=0.5)
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(1.5)) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx((0.5 - 1.0) / 2)


def test_conservative_dpo_by_hand():
    loss, metrics = preference_loss("sigmoid", *PAIRS[:4], label_smoothing=0.2)
    # −0.8·logσ(βΔ) − 0.2·logσ(−βΔ) per pair
    first = 0.8 * softplus(-0.2) + 0.2 * softplus(0.2)
    second = 0.8 * softplus(0.3) + 0.2 * softplus(-0.3)
    assert loss.item() == pytest.approx((first + second) / 2)
    assert metrics["rewards/margins"].item() == pytest.approx(-0.05)  # smoothing leaves the rewards


def test_label_smoothing_zero_is_plain_dpo():
    plain = (softplus(-0.2) + softplus(0.3)) / 2
    for loss_type in ("sigmoid", "robust"):
        loss, _ = preference_loss(loss_type, *PAIRS[:4], label_smoothing=0.0)
        assert loss.item() == pytest.approx(plain), loss_type


def test_robust_dpo_by_hand():
    loss, _ = preference_loss("robust", *PAIRS[:4], label_smoothing=0.2)
    # (−0.8·logσ(βΔ) + 0.2·logσ(−βΔ)) / (1 − 0.4)
    first = (0.8 * softplus(-0.2) - 0.2 * softplus(0.2)) / 0.6
    second = (0.8 * softplus(0.3) - 0.2 * softplus(-0.3)) / 0.6
    assert loss.item() == pytest.approx((first + second) / 2)
    conservative, _ = preference_loss("sigmoid", *PAIRS[:4], label_smoothing=0.2)
    assert loss.item() != pytest.approx(conservative.item())


def test_hinge_by_hand():
    loss, metrics = preference_loss("hinge", *PAIRS[:4])
    # relu(1 − βΔ) = relu(0.8), relu(1.3)
    assert loss.item() == pytest.approx((0.8 + 1.3) / 2)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)
    # past the margin (βΔ = 2 ≥ 1) the pair costs nothing
    loss, _ = preference_loss("hinge", t(0.0), t(-2.0), t(0.0), t(0.0), beta=1.0)
    assert loss.item() == 0.0


def test_ipo_by_hand_on_averaged_logratios():
    loss, metrics = preference_loss("ipo", *PAIRS)
    # Δ̄ = c / n_c − r / n_r = [0.25 + 0.5, −0.4 − 0.1] = [0.75, −0.5]; 1 / (2β) = 5
    assert loss.item() == pytest.approx(((0.75 - 5) ** 2 + (-0.5 - 5) ** 2) / 2)
    loss, _ = preference_loss("ipo", *PAIRS, beta=0.5)
    assert loss.item() == pytest.approx(((0.75 - 1) ** 2 + (-0.5 - 1) ** 2) / 2)
    # rewards from the summed log-ratios, as TRL's DPOTrainer logs them for IPO too
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05)


def test_ipo_uses_per_token_averages():
    base, _ = preference_loss("ipo", *PAIRS)
    # other token counts, same sums: another loss
    other, _ = preference_loss("ipo", *PAIRS[:4], CHOSEN_TOKENS * 2, REJECTED_TOKENS)
    assert other.item() != pytest.approx(base.item())
    # sums and counts scaled together (same averages): the same loss
    scaled, _ = preference_loss("ipo", *(x * 3 for x in PAIRS[:4]), CHOSEN_TOKENS * 3, REJECTED_TOKENS * 3)
    assert scaled.item() == pytest.approx(base.item())
    # the summed DPO loss is not invariant to that scaling
    dpo, _ = preference_loss("sigmoid", *PAIRS[:4])
    dpo_scaled, _ = preference_loss("sigmoid", *(x * 3 for x in PAIRS[:4]))
    assert dpo_scaled.item() != pytest.approx(dpo.item())


def test_simpo_by_hand():
    loss, metrics = preference_loss("simpo", *PAIRS, beta=2.0, simpo_gamma=0.5)
    # avg_c = [−10/4, −20/5] = [−2.5, −4], avg_r = [−12/2, −15/10] = [−6, −1.5]
    # β·(avg_c − avg_r) − γ = [2·3.5 − 0.5, 2·(−2.5) − 0.5] = [6.5, −5.5]
    assert loss.item() == pytest.approx((softplus(-6.5) + softplus(5.5)) / 2)
    # rewards β·avg: [−5, −8] and [−12, −3]
    assert metrics["rewards/chosen"].item() == pytest.approx(-6.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-7.5)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)
    assert metrics["logps/chosen"].item() == pytest.approx(-15.0)  # the summed log-probs


def test_simpo_defaults_are_trl_cpo_config():
    # beta = 0.1, simpo_gamma = 0.5: 0.1·[3.5, −2.5] − 0.5 = [−0.15, −0.75]
    loss, _ = preference_loss("simpo", POLICY_CHOSEN, POLICY_REJECTED, None, None, *PAIRS[4:])
    assert loss.item() == pytest.approx((softplus(0.15) + softplus(0.75)) / 2)


def test_simpo_label_smoothing_by_hand():
    loss, _ = preference_loss("simpo", *PAIRS, beta=2.0, simpo_gamma=0.5, label_smoothing=0.1)
    first = 0.9 * softplus(-6.5) + 0.1 * softplus(6.5)
    second = 0.9 * softplus(5.5) + 0.1 * softplus(-5.5)
    assert loss.item() == pytest.approx((first + second) / 2)


def test_simpo_is_reference_free():
    without, metrics_without = preference_loss(
        "simpo", POLICY_CHOSEN, POLICY_REJECTED, None, None, *PAIRS[4:]
    )
    with_refs, metrics_with = preference_loss(
        "simpo", POLICY_CHOSEN, POLICY_REJECTED, t(100.0, -3.0), t(-50.0, 7.0), *PAIRS[4:]
    )
    assert with_refs.item() == without.item()
    assert {k: v.item() for k, v in metrics_with.items()} == {k: v.item() for k, v in metrics_without.items()}


def test_global_pairs_makes_micro_batches_add_up():
    whole, _ = preference_loss("sigmoid", *PAIRS[:4])
    halves = [
        preference_loss("sigmoid", *(x[i : i + 1] for x in PAIRS[:4]), global_pairs=2)[0] for i in (0, 1)
    ]
    assert (halves[0] + halves[1]).item() == pytest.approx(whole.item())


def test_bf16_inputs_are_computed_in_float32():
    loss, metrics = preference_loss("sigmoid", *(x.to(torch.bfloat16) for x in PAIRS[:4]))
    assert loss.dtype == torch.float32 and metrics["rewards/chosen"].dtype == torch.float32


def test_nll_loss_is_a_token_mean():
    # −(−10 − 20) / (4 + 5), not the mean of the per-sequence means (2.5 + 4) / 2
    assert nll_loss(POLICY_CHOSEN, CHOSEN_TOKENS).item() == pytest.approx(30 / 9)
    assert nll_loss(POLICY_CHOSEN, CHOSEN_TOKENS, global_tokens=18).item() == pytest.approx(30 / 18)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(policy_rejected_logps=t(-1.0, -2.0, -3.0)), r"policy_rejected_logps must be \[B\] = \[2\]"),
        (dict(ref_chosen_logps=t(-1.0)), r"ref_chosen_logps must be \[B\] = \[2\]"),
        (dict(chosen_tokens=torch.tensor([[4, 5]])), r"chosen_tokens must be \[B\]"),
        (dict(policy_chosen_logps=POLICY_CHOSEN[None]), "policy_chosen_logps must be a 1-d tensor"),
        (dict(policy_chosen_logps=t(), policy_rejected_logps=t()), "empty batch"),
        (dict(policy_chosen_logps=torch.tensor([-10, -20])), "policy_chosen_logps must be floating-point"),
        (dict(policy_rejected_logps=None), "policy_rejected_logps is required"),
        (
            dict(loss_type="dpo"),
            r"unknown loss_type 'dpo'; known: \['hinge', 'ipo', 'robust', 'sigmoid', 'simpo'\]",
        ),
        (dict(beta=0.0), "beta must be a finite number > 0"),
        (dict(label_smoothing=0.5), r"label_smoothing must lie in \[0, 0.5\) for loss_type 'sigmoid'"),
        (dict(loss_type="robust", label_smoothing=-0.1), r"label_smoothing must lie in \[0, 0.5\)"),
        (dict(loss_type="hinge", label_smoothing=0.1), "loss_type 'hinge' does not use label_smoothing"),
        (dict(loss_type="ipo", label_smoothing=0.1), "loss_type 'ipo' does not use label_smoothing"),
        (dict(ref_rejected_logps=None), "ref_rejected_logps is None but its counterpart is given"),
        (dict(rejected_tokens=None), "rejected_tokens is None but its counterpart is given"),
        (dict(loss_type="ipo", chosen_tokens=torch.tensor([4, 0])), "chosen_tokens must be positive"),
        (dict(global_pairs=0), "global_pairs must be positive"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, match):
    args = dict(
        loss_type="sigmoid",
        policy_chosen_logps=POLICY_CHOSEN,
        policy_rejected_logps=POLICY_REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
        chosen_tokens=CHOSEN_TOKENS,
        rejected_tokens=REJECTED_TOKENS,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        preference_loss(**args)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "hinge", "ipo"])
def test_losses_that_need_the_reference_say_so(loss_type):
    with pytest.raises(
        ValueError, match=f"loss_type '{loss_type}' needs ref_chosen_logps and ref_rejected_logps"
    ):
        preference_loss(loss_type, POLICY_CHOSEN, POLICY_REJECTED, None, None, CHOSEN_TOKENS, REJECTED_TOKENS)


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_losses_that_average_need_token_counts(loss_type):
    with pytest.raises(ValueError, match=f"loss_type '{loss_type}' needs chosen_tokens and rejected_tokens"):
        preference_loss(loss_type, *PAIRS[:4])


def test_nll_loss_bad_inputs():
    with pytest.raises(ValueError, match=r"chosen_tokens must be \[B\] = \[2\]"):
        nll_loss(POLICY_CHOSEN, torch.tensor([4, 5, 6]))
    with pytest.raises(ValueError, match="chosen_tokens must be positive"):
        nll_loss(POLICY_CHOSEN, torch.tensor([4, -1]))
    with pytest.raises(ValueError, match="chosen_logps_sum must be a 1-d tensor"):
        nll_loss(POLICY_CHOSEN[None], CHOSEN_TOKENS)


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="preference loss 'sigmoid' is already registered"):
        register_preference_loss("sigmoid")(lambda batch, **_: None)

"""Each distillation loss against a value worked out by hand on a 4-token vocabulary."""

import math

import pytest
import torch

from actors.trainers.losses import LOSSES, distill_loss, project

# The student's softmax is exactly [0.1, 0.2, 0.3, 0.4]; the teacher's top-2 are tokens 3 and 0
# with 0.5 and 0.3, so its tail holds 0.2. On the buckets (token 3, token 0, tail):
#   teacher p = [0.5, 0.3, 0.2], student q = [0.4, 0.1, 0.5]  (tail = 0.2 + 0.3).
STUDENT = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
TOP_IDS = torch.tensor([[3, 0]])
TOP_PROBS = torch.tensor([[0.5, 0.3]])
P, Q = [0.5, 0.3, 0.2], [0.4, 0.1, 0.5]


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def mixture(beta):
    return [beta * x + (1 - beta) * y for x, y in zip(P, Q)]


HAND = {
    # 0.5 ln(0.5/0.4) + 0.3 ln(0.3/0.1) + 0.2 ln(0.2/0.5)
    "fkl": (kl(P, Q), 0.257897),
    # 0.4 ln(0.4/0.5) + 0.1 ln(0.1/0.3) + 0.5 ln(0.5/0.2)
    "rkl": (kl(Q, P), 0.259027),
    # β = 0.5: m = [0.45, 0.2, 0.35]; ½ KL(p || m) + ½ KL(q || m)
    "jsd": (0.5 * kl(P, mixture(0.5)) + 0.5 * kl(Q, mixture(0.5)), 0.062153),
    # ½ (|0.5 - 0.4| + |0.3 - 0.1| + |0.2 - 0.5|)
    "tvd": (0.5 * (0.1 + 0.2 + 0.3), 0.3),
}


def test_tail_bucket_holds_the_mass_outside_the_teacher_top_k():
    p, log_q = project(STUDENT, TOP_IDS, TOP_PROBS)
    torch.testing.assert_close(p, torch.tensor([P]))
    torch.testing.assert_close(log_q.exp(), torch.tensor([Q]))


@pytest.mark.parametrize("name", sorted(HAND))
def test_loss_matches_the_hand_computed_value(name):
    formula, rounded = HAND[name]
    assert formula == pytest.approx(rounded, abs=1e-6)  # the arithmetic in the comments
    value = distill_loss(STUDENT, TOP_IDS, TOP_PROBS, torch.tensor([True]), name, beta=0.5)
    assert value.item() == pytest.approx(formula, rel=1e-5)


def test_generalised_jsd_uses_beta_as_the_teacher_weight():
    beta = 0.25
    m = mixture(beta)  # [0.425, 0.15, 0.425]
    expected = beta * kl(P, m) + (1 - beta) * kl(Q, m)
    value = distill_loss(STUDENT, TOP_IDS, TOP_PROBS, torch.tensor([True]), "jsd", beta=beta)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        distill_loss(STUDENT, TOP_IDS, TOP_PROBS, torch.tensor([True]), "jsd", beta=1.0)


def test_renormalised_top_k_forward_kl():
    # Over tokens (3, 0) only: teacher [0.5, 0.3] / 0.8, student [0.4, 0.1] / 0.5.
    p, q = [0.625, 0.375], [0.8, 0.2]
    value = distill_loss(STUDENT, TOP_IDS, TOP_PROBS, torch.tensor([True]), "fkl", tail=False)
    assert value.item() == pytest.approx(kl(p, q), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_positions_do_not_count_and_the_mean_is_over_kept_ones(name):
    noise = torch.randn(1, 4) * 5
    logits = torch.cat([STUDENT, noise, STUDENT]).view(1, 3, 4)  # [B=1, T=3, V=4]
    ids = torch.tensor([[[3, 0], [1, 2], [3, 0]]])
    probs = torch.tensor([[[0.5, 0.3], [0.9, 0.1], [0.5, 0.3]]])
    mask = torch.tensor([[True, False, True]])
    value = distill_loss(logits, ids, probs, mask, name)  # position 1 is noise, masked out
    single = distill_loss(STUDENT, TOP_IDS, TOP_PROBS, torch.tensor([True]), name)
    torch.testing.assert_close(value, single)
    assert distill_loss(logits, ids, probs, torch.zeros(1, 3, dtype=torch.bool), name).item() == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_is_zero_at_the_teacher_and_pulls_the_student_towards_it(name):
    teacher = torch.tensor([[0.05, 0.15, 0.2, 0.6]])
    ids = torch.tensor([[3, 2, 1, 0]])
    probs = teacher[:, [3, 2, 1, 0]]
    at_teacher = distill_loss(teacher.log(), ids[:, :2], probs[:, :2], torch.tensor([True]), name)
    assert at_teacher.item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(1, 4, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=0.5)
    first = None
    for _ in range(200):
        value = distill_loss(student, ids, probs, torch.tensor([True]), name)
        first = value.item() if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert value.item() < 0.2 * first
    assert student.softmax(-1).argmax().item() == 3

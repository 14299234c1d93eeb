"""The draft budget follows measured costs: bigger batches draft less, a node is drafted only
while its confidence pays for what verifying it costs, and a step cost that is not a line is
kept as measured."""

import pytest
import torch

from actors.budget import BudgetController, StepCost
from actors.messages import DraftBudget, DraftTree


def test_step_cost_interpolates_between_measured_rows_and_extends_their_line():
    cost = StepCost()
    assert cost.seconds(9) == 0.0 and not cost.measured()
    cost.observe(5, 0.100)
    assert cost.seconds(1) == cost.seconds(33) == 0.100  # one count known: flat
    for rows, seconds in [(1, 0.080), (9, 0.180), (17, 0.150), (33, 0.210)]:
        cost.observe(rows, seconds)
    assert cost.seconds(9) == pytest.approx(0.180)  # measured counts as measured, dips kept
    assert cost.seconds(13) == pytest.approx(0.165)  # halfway between 9 and 17
    assert cost.seconds(65) == pytest.approx(0.210 + 32 * (0.210 - 0.080) / 32)  # along 1 → 33
    cost.observe(9, 0.080)
    assert cost.seconds(9) == pytest.approx(0.7 * 0.180 + 0.3 * 0.080)  # a running mean


def test_node_cost_grows_with_the_batch_until_drafting_stops():
    budget = BudgetController(max_nodes=32, max_depth=8)
    assert budget.plan(1).node_cost == 0  # nothing measured yet: draft freely
    for tokens in (2, 9, 17, 33):
        budget.observe(tokens, 0.090 + 0.004 * tokens)
    costs = [budget.plan(batch).node_cost for batch in (1, 8, 64)]
    assert costs[0] < costs[1] < costs[2] < 1
    assert budget.plan(1).admits(0.9, 1.0, 0) and not budget.plan(64).admits(0.5, 1.0, 0)


def test_a_stall_is_clipped():
    budget = BudgetController(max_nodes=8, max_depth=8)
    for tokens in (1, 9) * 5:
        budget.observe(tokens, 0.090 + 0.004 * tokens)
    budget.observe(9, 5.0)  # another process took the CPU
    assert budget.seconds(9) < 0.2


def test_admits_stops_when_a_node_no_longer_pays():
    plan = DraftBudget(max_nodes=10, max_depth=4, node_cost=0.1)
    assert plan.admits(0.5, expected=1.0, nodes=0)
    assert not plan.admits(0.05, expected=2.0, nodes=5)  # 0.05 * 1.5 < 0.1 * 2.0
    assert not plan.admits(0.99, expected=1.0, nodes=10)  # budget full


def fitted(a: float, b: float) -> BudgetController:
    budget = BudgetController(max_nodes=32, max_depth=32)
    for tokens in (16, 64, 160, 528) * 3:
        budget.observe(tokens, a + b * tokens)
    return budget


def test_trim_cuts_one_long_tree_that_would_pad_the_whole_batch():
    budget = fitted(a=0.30, b=0.002)
    long = DraftTree.chain(0, list(range(32)), [0.9] * 32)  # path confidences 0.9, 0.81, ...
    trees = [long] + [DraftTree.empty(s) for s in range(1, 4)]
    trimmed = budget.trim(trees)
    size = len(trimmed[0])
    # 4 sequences: each node of the long tree costs 4 padded positions; deep nodes do not pay.

    def rate(n: int) -> float:
        return (4 + sum(long.path_confidences()[:n])) / (0.30 + 0.002 * 4 * (n + 1))

    assert 0 < size < 32 and rate(size) == max(rate(n) for n in range(33))
    assert trimmed[0].tokens.tolist() == list(range(size))
    assert trimmed[0].parents.tolist() == list(range(-1, size - 1))
    assert all(len(tree) == 0 for tree in trimmed[1:])


def test_trim_keeps_trees_when_the_verifier_has_room():
    budget = fitted(a=0.10, b=0.0001)
    trees = [DraftTree.chain(0, [5, 6, 7], [0.9, 0.9, 0.9])]
    assert budget.trim(trees) == trees


def test_path_confidences_multiply_down_the_tree():
    tree = DraftTree(
        0, torch.tensor([1, 2, 3, 4]), torch.tensor([-1, -1, 0, 2]), torch.tensor([0.5, 0.4, 0.5, 0.5])
    )
    assert tree.path_confidences() == pytest.approx([0.5, 0.4, 0.25, 0.125])
    assert tree.prefix(3).parents.tolist() == [-1, -1, 0] and tree.prefix(9) is tree


def test_calibration_recovers_after_drafts_stop():
    budget = fitted(a=0.10, b=0.02)  # a drafted node costs a fifth of a step
    tree = DraftTree.chain(0, [5, 6, 7, 8], [0.99] * 4)
    for _ in range(10):  # a drafter that promises ~4 tokens and gets none accepted
        budget.observe_acceptance([tree], accepted=0)
    assert budget.calibration.ratio() < 0.1 and len(budget.trim([tree])[0]) == 0
    for _ in range(40):  # steps without drafts: the evidence fades, drafts are tried again
        budget.observe_acceptance([DraftTree.empty(0)], accepted=0)
    assert budget.calibration.ratio() > 0.7 and len(budget.trim([tree])[0]) > 0


def test_trim_keeps_a_node_the_padded_rows_make_free():
    """A verifier that computes 3 rows as 4 (a CPU's cheap row counts) pays nothing for a third
    node once it has two: trim keeps it where an unpadded cost would cut it."""
    pad = {3: 4}
    plain, padded = BudgetController(32, 32), BudgetController(32, 32, rows_computed=lambda n: pad.get(n, n))
    for budget in (plain, padded):
        for tokens in (1, 2, 4, 5, 6) * 3:
            budget.observe(tokens, 0.05 + 0.01 * tokens)
    tree = DraftTree.chain(0, [5, 6, 7], [0.9, 0.5, 0.5])  # path confidences 0.9, 0.45, 0.225
    assert len(plain.trim([tree])[0]) == 2
    assert len(padded.trim([tree])[0]) == 3


def test_a_long_chain_pays_where_the_cost_flattens():
    """The shape of SmolLM2's step on a 2-core CPU (tandem verify-cost): 4 rows 75 ms, 9 rows
    170, 17 rows 150, 33 rows 220. A sure chain (a repeating text) is kept whole: 33 rows yield
    7x the tokens of 4 rows for 2.9x the time; a doubtful one is cut to the 3 nodes the padded
    rows make free."""
    budget = BudgetController(32, 32, rows_computed=lambda n: 4 if n <= 4 else n)
    for rows, seconds in [(4, 0.075), (9, 0.170), (17, 0.150), (33, 0.220)] * 3:
        budget.observe(rows, seconds)
    sure = DraftTree.chain(0, list(range(32)), [0.99] * 32)
    doubtful = DraftTree.chain(0, list(range(32)), [0.6] * 32)
    assert len(budget.trim([sure])[0]) == 32
    assert len(budget.trim([doubtful])[0]) == 3


def test_nodes_inside_the_padded_rows_are_drafted_whatever_they_cost():
    budget = BudgetController(16, 8, rows_computed=lambda n: 4 if n <= 4 else n)
    for tokens, seconds in [(4, 0.08), (5, 0.2)] * 10:  # a node beyond the padding costs a lot
        budget.observe(tokens, seconds)
    plan = budget.plan(1)
    assert plan.free_nodes == 3 and plan.node_cost > 0.5
    assert [plan.admits(0.01, 1.0, nodes) for nodes in range(5)] == [True, True, True, False, False]
    assert budget.plan(4).free_nodes == 0  # four sequences fill the padded rows themselves

"""The draft budget follows measured costs: bigger batches draft less, and a step skips drafts
that are not expected to beat plain decoding."""

import torch

from actors.budget import BudgetController, LinearCost
from actors.messages import DraftBudget, DraftTree


def test_linear_cost_recovers_the_line():
    cost = LinearCost()
    for tokens in (1, 5, 9, 17, 33) * 4:
        cost.observe(tokens, 0.080 + 0.002 * tokens)
    a, b = cost.coefficients()
    assert abs(a - 0.080) < 1e-6 and abs(b - 0.002) < 1e-6


def timed_controller() -> BudgetController:
    budget = BudgetController(max_nodes=32, max_depth=8)
    for tokens in (2, 9, 17, 33):
        budget.observe(tokens, 0.150 + 0.004 * tokens, drafted=True)
    budget.observe(1, 0.090, drafted=False)
    return budget


def test_node_cost_grows_with_the_batch_until_drafting_stops():
    budget = timed_controller()
    costs = [budget.plan(batch).node_cost for batch in (1, 8, 64)]
    assert costs[0] < costs[1] < costs[2] < 1
    assert budget.plan(1).admits(0.9, 1.0, 0) and not budget.plan(64).admits(0.5, 1.0, 0)


def test_admits_stops_when_a_node_no_longer_pays():
    plan = DraftBudget(max_nodes=10, max_depth=4, node_cost=0.1)
    assert plan.admits(0.5, expected=1.0, nodes=0)
    assert not plan.admits(0.05, expected=2.0, nodes=5)  # 0.05 * 1.5 < 0.1 * 2.0
    assert not plan.admits(0.99, expected=1.0, nodes=10)  # budget full


def tree(confidences: list[float]) -> DraftTree:
    n = len(confidences)
    return DraftTree(0, torch.arange(n), torch.arange(-1, n - 1), torch.tensor(confidences))


def test_unpromising_trees_are_skipped_when_a_plain_step_is_much_cheaper():
    budget = timed_controller()  # plain 90 ms; 8 drafts ≈ 186 ms
    # break-even: 186 / 90 = 2.07 expected tokens per step
    assert not budget.worth_drafting([tree([0.1] * 8)])  # expects 1.8
    assert budget.worth_drafting([tree([0.2] * 8)])  # expects 2.6
    assert budget.worth_drafting([DraftTree.empty(0)])  # nothing to decide

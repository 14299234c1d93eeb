"""The draft budget follows measured costs: bigger batches draft less, and a node is drafted
only while its confidence pays for what verifying it costs."""

from actors.budget import BudgetController, LinearCost
from actors.messages import DraftBudget


def test_linear_cost_recovers_the_line():
    cost = LinearCost()
    for tokens in (1, 5, 9, 17, 33) * 4:
        cost.observe(tokens, 0.080 + 0.002 * tokens)
    a, b = cost.coefficients()
    assert abs(a - 0.080) < 1e-6 and abs(b - 0.002) < 1e-6


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
    assert budget.verify_cost.coefficients()[0] < 0.2


def test_admits_stops_when_a_node_no_longer_pays():
    plan = DraftBudget(max_nodes=10, max_depth=4, node_cost=0.1)
    assert plan.admits(0.5, expected=1.0, nodes=0)
    assert not plan.admits(0.05, expected=2.0, nodes=5)  # 0.05 * 1.5 < 0.1 * 2.0
    assert not plan.admits(0.99, expected=1.0, nodes=10)  # budget full

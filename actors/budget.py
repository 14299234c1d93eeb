"""Adaptive draft budget: how much each sequence may draft this step, from measured costs.

The verifier's forward time is fitted as ``time(n) = a + b·n`` over the tokens ``n`` it
processes (an exponentially weighted least-squares fit of decode steps). With ``B`` sequences
in a step, one sequence's share of a draft-free step costs ``a/B + b`` and each drafted node
``b``; their ratio is the budget's ``node_cost``. Drafters grow trees best-first and keep a
node only while its path confidence (their estimate of the chance it is accepted) raises the
expected tokens per unit of time (:meth:`DraftBudget.admits`) — SpecDec++-style stopping with a
measured threshold. Large batches make ``node_cost`` approach 1 and speculation stop by itself;
a verifier with room to spare (small batches, a GPU) makes it small and trees grow.

The verifier pads a step to its largest tree, so one long tree costs as if every sequence had
drafted as much. The fit is therefore made on padded tokens, and :meth:`BudgetController.trim`
cuts the step's trees to the common size that maximises its expected tokens per second. The
drafter's confidences are taken at the rate they have actually been accepted (:class:`Calibration`).
Where the verifier computes more rows than it is given (a CPU pads a few row counts to cheaper
ones, :mod:`actors.cpu_linear`), fit and trim count the rows it computes, and the budget tells
the drafter how many nodes fit in the padding for free (:attr:`DraftBudget.free_nodes`): with 1 row
computed as 4, a fit over the padded step function alone had put the cost of one node at a whole
step and switched drafting off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from actors.messages import DraftBudget, DraftTree

EXPLORE_NODES = 4  # tree size cap while the verifier's cost per token is still unknown


@dataclass
class LinearCost:
    """Exponentially weighted least-squares fit of ``time = a + b · tokens``."""

    decay: float = 0.97
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, wx, wy, wxx, wxy

    def observe(self, tokens: int, seconds: float) -> None:
        w, wx, wy, wxx, wxy = (s * self.decay for s in self.sums)
        self.sums = [w + 1, wx + tokens, wy + seconds, wxx + tokens * tokens, wxy + tokens * seconds]

    def coefficients(self) -> tuple[float, float]:
        """``(a, b)``, both >= 0 (a fit whose intercept would be negative is refitted through the
        origin); ``b = 0`` until the observed sizes vary."""
        w, wx, wy, wxx, wxy = self.sums
        if w == 0:
            return 0.0, 0.0
        mean_x, mean_y = wx / w, wy / w
        var = wxx / w - mean_x**2
        slope = max((wxy / w - mean_x * mean_y) / var, 0.0) if var > 1e-9 else 0.0
        if mean_y - slope * mean_x < 0:
            return 0.0, wxy / wxx
        return mean_y - slope * mean_x, slope


class BudgetController:
    """Turns the measured verifier cost into each step's :class:`DraftBudget`.

    Args:
        max_nodes: largest tree a sequence may draft (0: never speculate).
        max_depth: depth limit passed to the drafter.
        adaptive: when False, drafts are treated as free (``node_cost`` 0).
        rows_computed: the rows the verifier computes for a step of so many token rows.
    """

    def __init__(
        self, max_nodes: int, max_depth: int, adaptive: bool = True, rows_computed: Callable[[int], int] = int
    ):
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.adaptive = adaptive
        self.rows_computed = rows_computed
        self.verify_cost = LinearCost()
        self.calibration = Calibration()

    def plan(self, batch_size: int) -> DraftBudget:
        """The budget for every sequence of a step of ``batch_size`` sequences."""
        node_cost = 0.0
        if self.adaptive:
            a, b = self.verify_cost.coefficients()
            share = a / batch_size + b
            node_cost = b / share if share > 0 else 0.0
        free = (self.rows_computed(batch_size) - batch_size) // batch_size  # rows padded in anyway
        return DraftBudget(self.max_nodes, self.max_depth, node_cost, min(free, self.max_nodes))

    def trim(self, trees: list[DraftTree]) -> list[DraftTree]:
        """Cut every tree to the first ``n`` nodes, for the ``n`` that maximises the step's
        expected tokens (one per sequence plus the trees' path confidences, scaled by the
        drafter's measured calibration) over its time ``a + b · rows`` for the ``batch · (n + 1)``
        rows it computes. Until the fit
        has a slope, trees are cut to ``EXPLORE_NODES``: enough to measure one, cheap if drafts fail."""
        largest = max((len(tree) for tree in trees), default=0)
        if not self.adaptive or largest == 0:
            return trees
        a, b = self.verify_cost.coefficients()
        if b <= 0:
            return [tree.prefix(EXPLORE_NODES) for tree in trees]
        batch, scale = len(trees), min(self.calibration.ratio(), 1.0)
        gains = [tree.path_confidences() for tree in trees]
        rows = self.rows_computed
        expected, best, best_rate = float(batch), 0, batch / (a + b * rows(batch))
        for size in range(1, largest + 1):
            expected += scale * sum(gain[size - 1] for gain in gains if len(gain) >= size)
            rate = expected / (a + b * rows(batch * (size + 1)))
            if rate > best_rate:
                best, best_rate = size, rate
        return [tree.prefix(best) for tree in trees]

    def observe(self, step_tokens: int, verify_seconds: float) -> None:
        """Record a decode step: tokens the verifier processed (padded: sequences × (largest
        tree + 1)) and how long it took. A time far above the fit (another process took the
        CPU) is clipped so one stall does not skew it."""
        step_tokens = self.rows_computed(step_tokens)
        a, b = self.verify_cost.coefficients()
        if a > 0:
            verify_seconds = min(verify_seconds, 2 * (a + b * step_tokens))
        self.verify_cost.observe(step_tokens, verify_seconds)

    def observe_acceptance(self, trees: list[DraftTree], accepted: int) -> None:
        """Record how many drafted tokens of ``trees`` the verifier accepted, against how many
        their path confidences promised (every speculating step, drafts or not: see
        :class:`Calibration`)."""
        self.calibration.observe(sum(sum(tree.path_confidences()) for tree in trees), accepted)


@dataclass
class Calibration:
    """Exponentially weighted ratio of accepted to promised draft tokens, with a prior of one
    promised token accepted. Observed every step, so after steps without drafts the evidence
    fades back to the prior and drafts get tried again: a bad stretch (a prompt the drafter
    cannot predict) does not switch speculation off for good."""

    decay: float = 0.9
    promised: float = 0.0
    accepted: float = 0.0

    def observe(self, promised: float, accepted: float) -> None:
        self.promised = self.promised * self.decay + promised
        self.accepted = self.accepted * self.decay + accepted

    def ratio(self) -> float:
        return (self.accepted + 1.0) / (self.promised + 1.0)

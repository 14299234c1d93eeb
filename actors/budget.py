"""Adaptive draft budget: how much each sequence may draft this step, from measured costs.

The verifier's forward time is measured by the rows it computes (:class:`StepCost`): a running
mean per row count, interpolated between the counts measured. A line fitted through all of them
(as this module did first) cannot hold the shape a CPU gives: on the 2-core VM of
docs/benchmarks.md SmolLM2-135M's step costs 74-80 ms for 1-4 rows, 110-123 for 6-8, 167-185 for
9-11, then 152-154 for 13-21 and 218 for 33 (``tandem verify-cost``), so a fit either forbade the
long chains a repeating text earns or paid for trees that did not. With ``B`` sequences in a
step, the budget's ``node_cost`` is the mean cost of a drafted node, as a fraction of one
sequence's share of a draft-free step. Drafters grow trees best-first and keep a node only while
its path confidence (their estimate of the chance it is accepted) raises the expected tokens per
unit of time (:meth:`DraftBudget.admits`) — SpecDec++-style stopping with a measured threshold.
Large batches make ``node_cost`` approach 1 and speculation stop by itself; a verifier with room
to spare (small batches, a GPU) makes it small and trees grow.

The verifier pads a step to its largest tree, so one long tree costs as if every sequence had
drafted as much. Costs are therefore kept by padded rows, and :meth:`BudgetController.trim`
cuts the step's trees to the common size that maximises its expected tokens per second, by the
measured cost of each size. The drafter's confidences are taken at the rate they have actually
been accepted (:class:`Calibration`). Where the verifier computes more rows than it is given (a
CPU pads a few row counts to cheaper ones, :mod:`actors.cpu_linear`), costs count the rows it
computes, and the budget tells the drafter how many nodes fit in the padding for free
(:attr:`DraftBudget.free_nodes`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.messages import DraftBudget, DraftTree

EXPLORE_NODES = 4  # tree size cap while the verifier's cost per token is still unknown


@dataclass
class StepCost:
    """Step seconds by rows computed: an exponentially weighted mean per row count measured.

    Between measured counts the cost is interpolated linearly; beyond them it continues along the
    line through the smallest and the largest (flat while only one count is known), so a size
    never tried is priced from its neighbours and gets measured once trim picks it.
    """

    decay: float = 0.7
    table: dict[int, float] = field(default_factory=dict)

    def observe(self, rows: int, seconds: float) -> None:
        known = self.table.get(rows)
        self.table[rows] = seconds if known is None else self.decay * known + (1 - self.decay) * seconds

    def seconds(self, rows: int) -> float:
        """The expected step time for ``rows`` computed rows (0.0 while nothing is measured)."""
        if rows in self.table or not self.table:
            return self.table.get(rows, 0.0)
        counts = sorted(self.table)
        low, high = counts[0], counts[-1]
        if low < rows < high:
            at = bisect.bisect(counts, rows)
            left, right = counts[at - 1], counts[at]
        else:
            left, right = low, high
        if left == right:
            return self.table[left]
        slope = (self.table[right] - self.table[left]) / (right - left)
        if not low < rows < high:
            slope = max(slope, 0.0)
        return max(self.table[left] + slope * (rows - left), 1e-6)  # a rate divides by it

    def measured(self) -> bool:
        return bool(self.table)


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
        self.step_cost = StepCost()
        self.calibration = Calibration()

    def plan(self, batch_size: int) -> DraftBudget:
        """The budget for every sequence of a step of ``batch_size`` sequences: ``node_cost`` is
        the mean cost of a node over a full tree, relative to the draft-free step."""
        node_cost = 0.0
        if self.adaptive and self.max_nodes:
            base = self.seconds(batch_size)
            full = self.seconds(batch_size * (self.max_nodes + 1))
            node_cost = max(full - base, 0.0) / (self.max_nodes * base) if base > 0 else 0.0
        free = (self.rows_computed(batch_size) - batch_size) // batch_size  # rows padded in anyway
        return DraftBudget(self.max_nodes, self.max_depth, node_cost, min(free, self.max_nodes))

    def seconds(self, rows: int) -> float:
        """The expected verifier time of a step of ``rows`` token rows."""
        return self.step_cost.seconds(self.rows_computed(rows))

    def trim(self, trees: list[DraftTree]) -> list[DraftTree]:
        """Cut every tree to the first ``n`` nodes, for the ``n`` that maximises the step's
        expected tokens (one per sequence plus the trees' path confidences, scaled by the
        drafter's measured calibration) over the measured time of its ``batch · (n + 1)`` rows.
        Before any step is measured, trees are cut to ``EXPLORE_NODES``: cheap if drafts fail."""
        largest = max((len(tree) for tree in trees), default=0)
        if not self.adaptive or largest == 0:
            return trees
        if not self.step_cost.measured():
            return [tree.prefix(EXPLORE_NODES) for tree in trees]
        batch, scale = len(trees), min(self.calibration.ratio(), 1.0)
        gains = [tree.path_confidences() for tree in trees]
        expected, best, best_rate = float(batch), 0, batch / self.seconds(batch)
        for size in range(1, largest + 1):
            expected += scale * sum(gain[size - 1] for gain in gains if len(gain) >= size)
            rate = expected / self.seconds(batch * (size + 1))
            if rate > best_rate:
                best, best_rate = size, rate
        return [tree.prefix(best) for tree in trees]

    def observe(self, step_tokens: int, verify_seconds: float) -> None:
        """Record a decode step: tokens the verifier processed (padded: sequences × (largest
        tree + 1)) and how long it took. A time far above the expected one (another process took
        the CPU) is clipped so one stall does not skew it."""
        expected = self.seconds(step_tokens)
        if expected > 0:
            verify_seconds = min(verify_seconds, 2 * expected)
        self.step_cost.observe(self.rows_computed(step_tokens), verify_seconds)

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

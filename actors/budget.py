"""Adaptive draft budget: how much each sequence may draft this step, from measured costs.

The verifier's forward time is fitted as ``time(n) = a + b·n`` over the tokens ``n`` it
processes (an exponentially weighted least-squares fit of decode steps). With ``B`` sequences
in a step, one sequence's share of a draft-free step costs ``a/B + b`` and each drafted node
``b``; their ratio is the budget's ``node_cost``. Drafters grow trees best-first and keep a
node only while its path confidence (their estimate of the chance it is accepted) raises the
expected tokens per unit of time (:meth:`DraftBudget.admits`) — SpecDec++-style stopping with a
measured threshold. Large batches make ``node_cost`` approach 1 and speculation stop by itself;
a verifier with room to spare (small batches, a GPU) makes it small and trees grow.

Steps without drafts are fitted apart: on a CPU one token runs as a matrix-vector product and two
or more as a matrix product, which can cost far more than the line through drafted steps says
(float32 here: 92 ms plain, 159 ms with 8 drafts, 164 ms with 16). Before verifying, the step
keeps its trees only when their expected tokens per second beat plain decoding's
(:meth:`BudgetController.worth_drafting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.messages import DraftBudget, DraftTree


@dataclass
class LinearCost:
    """Exponentially weighted least-squares fit of ``time = a + b · tokens``."""

    decay: float = 0.97
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, wx, wy, wxx, wxy

    def observe(self, tokens: int, seconds: float) -> None:
        w, wx, wy, wxx, wxy = (s * self.decay for s in self.sums)
        self.sums = [w + 1, wx + tokens, wy + seconds, wxx + tokens * tokens, wxy + tokens * seconds]

    @property
    def seen(self) -> bool:
        return self.sums[0] > 0

    def predict(self, tokens: float) -> float:
        a, b = self.coefficients()
        return a + b * tokens

    def coefficients(self) -> tuple[float, float]:
        """``(a, b)``; ``b = 0`` until the observed sizes vary."""
        w, wx, wy, wxx, wxy = self.sums
        if w == 0:
            return 0.0, 0.0
        mean_x, mean_y = wx / w, wy / w
        var = wxx / w - mean_x**2
        slope = max((wxy / w - mean_x * mean_y) / var, 0.0) if var > 1e-9 else 0.0
        return max(mean_y - slope * mean_x, 0.0), slope


class BudgetController:
    """Turns the measured verifier cost into each step's :class:`DraftBudget`.

    Args:
        max_nodes: largest tree a sequence may draft (0: never speculate).
        max_depth: depth limit passed to the drafter.
        adaptive: when False, drafts are treated as free (``node_cost`` 0).
    """

    def __init__(self, max_nodes: int, max_depth: int, adaptive: bool = True):
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.adaptive = adaptive
        self.drafted_cost = LinearCost()  # steps that verified at least one draft
        self.plain_cost = LinearCost()  # steps that verified none

    def plan(self, batch_size: int) -> DraftBudget:
        """The budget for every sequence of a step of ``batch_size`` sequences."""
        node_cost = 0.0
        if self.adaptive:
            a, b = self.drafted_cost.coefficients()
            share = a / batch_size + b
            node_cost = b / share if share > 0 else 0.0
        return DraftBudget(max_nodes=self.max_nodes, max_depth=self.max_depth, node_cost=node_cost)

    def worth_drafting(self, trees: list[DraftTree]) -> bool:
        """Whether verifying ``trees`` is expected to yield more tokens per second than a plain
        step; True until both kinds of step have been timed."""
        drafted_nodes = sum(len(tree) for tree in trees)
        if not self.adaptive or not drafted_nodes or not self.plain_cost.seen or not self.drafted_cost.seen:
            return True
        expected = sum(1 + float(tree.draft_probs.sum()) for tree in trees)
        drafted = self.drafted_cost.predict(len(trees) + drafted_nodes)
        plain = self.plain_cost.predict(len(trees))
        return expected * plain > len(trees) * drafted

    def observe(self, step_tokens: int, verify_seconds: float, drafted: bool) -> None:
        """Record a decode step: tokens the verifier processed, how long it took, whether it
        verified drafts. A time far above the fit (another process took the CPU) is clipped so
        one stall does not skew it."""
        fit = self.drafted_cost if drafted else self.plain_cost
        if fit.seen:
            verify_seconds = min(verify_seconds, 2 * fit.predict(step_tokens))
        fit.observe(step_tokens, verify_seconds)

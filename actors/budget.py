"""Adaptive draft budget: how many nodes to draft per sequence this step, from measurements.

Throughput of a step with tree size ``s`` for ``B`` sequences is

    B · (1 + accepted(s)) / (draft_time(s) + verify_time(B · (1 + s)))

where ``accepted(s)`` is the running mean of accepted drafted tokens at size ``s``,
``draft_time(s)`` the running mean time the drafter took, and ``verify_time(n) = a + b·n`` a
least-squares fit of the verifier's forward time against the tokens it processed. The budget
picks the size with the best expected throughput, so it falls to 0 (plain decoding) when the
verifier is saturated (large batches) or drafts stop being accepted.

One step at size ``S`` also tells what every smaller size would have accepted: drafters grow
trees best-first, so the tree of size ``s`` is the ``s`` most confident nodes of the tree of
size ``S`` (ranked by ``draft_probs``, ties by index), and the accepted path would have stopped
at its first node ranked ``>= s``. Larger sizes are re-tried now and then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.messages import DraftBudget, DraftTree, Verdict

EMA = 0.2  # weight of the newest observation in running means
EXPLORE_EVERY = 8  # steps between tries of the next larger size


@dataclass
class LinearCost:
    """Exponentially weighted least-squares fit of ``time = a + b · tokens``."""

    decay: float = 0.95
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, wx, wy, wxx, wxy

    def observe(self, tokens: int, seconds: float) -> None:
        w, wx, wy, wxx, wxy = (s * self.decay for s in self.sums)
        self.sums = [w + 1, wx + tokens, wy + seconds, wxx + tokens * tokens, wxy + tokens * seconds]

    def predict(self, tokens: float) -> float:
        w, wx, wy, wxx, wxy = self.sums
        if w == 0:
            return 0.0
        var = wxx / w - (wx / w) ** 2
        slope = max((wxy / w - wx * wy / w**2) / var, 0.0) if var > 1e-9 else 0.0
        return wy / w + slope * (tokens - wx / w)


class BudgetController:
    """Chooses each step's tree size from a ladder of sizes.

    Args:
        max_nodes: largest tree size allowed.
        max_depth: depth limit passed to the drafter.
        adaptive: when False, always draft ``max_nodes``.
    """

    def __init__(self, max_nodes: int, max_depth: int, adaptive: bool = True):
        self.max_depth = max_depth
        self.adaptive = adaptive
        ladder = [s for s in (2, 4, 8, 16, 32, 64) if s < max_nodes]
        self.sizes = [0] + ladder + [max_nodes] if max_nodes else [0]
        self.accepted: dict[int, float | None] = {s: None for s in self.sizes}  # mean accepted drafts
        self.accepted[0] = 0.0
        self.observations = {s: 0 for s in self.sizes}
        self.draft_seconds = {s: 0.0 for s in self.sizes}
        self.verify_cost = LinearCost()
        self.steps = 0
        self.current = self.sizes[-1]

    def plan(self, batch_size: int) -> DraftBudget:
        """The budget for every sequence of a step of ``batch_size`` sequences."""
        self.steps += 1
        if not self.adaptive:
            self.current = self.sizes[-1]
        elif any(self.accepted[s] is None for s in self.sizes):
            self.current = self.sizes[-1]  # one step at the largest size informs all smaller ones
        else:
            self.current = max(self.sizes, key=lambda s: self._throughput(s, batch_size))
            if self.steps % EXPLORE_EVERY == 0:
                self.current = self._larger(self.current)
        return DraftBudget(max_nodes=self.current, max_depth=self.max_depth)

    def observe(
        self,
        step_tokens: int,
        draft_seconds: float,
        verify_seconds: float,
        trees: list[DraftTree],
        verdicts: list[Verdict],
    ) -> None:
        """Record a step: tokens the verifier processed, the two timings, the trees and verdicts."""
        self.verify_cost.observe(step_tokens, verify_seconds)
        size = self.current
        self.draft_seconds[size] = (1 - EMA) * self.draft_seconds[size] + EMA * draft_seconds
        # An empty tree says the drafter had nothing to offer, not how a size would have fared.
        drafted = [(t, v) for t, v in zip(trees, verdicts) if len(t)]
        if not drafted:
            return
        for smaller in (s for s in self.sizes if 0 < s <= size):
            accepted = sum(accepted_within(t, v, smaller) for t, v in drafted) / len(drafted)
            # a plain mean over the first observations, then an exponential one
            self.observations[smaller] += 1
            weight = max(EMA, 1 / self.observations[smaller])
            previous = self.accepted[smaller] or 0.0
            self.accepted[smaller] = previous + weight * (accepted - previous)

    def _throughput(self, size: int, batch_size: int) -> float:
        seconds = self.draft_seconds[size] + self.verify_cost.predict(batch_size * (1 + size))
        return batch_size * (1 + (self.accepted[size] or 0.0)) / max(seconds, 1e-6)

    def _larger(self, size: int) -> int:
        """The next size up: smaller sizes are learned from every step, larger ones only by trying."""
        i = self.sizes.index(size)
        return self.sizes[min(i + 1, len(self.sizes) - 1)]


def accepted_within(tree: DraftTree, verdict: Verdict, size: int) -> int:
    """Drafts the verdict would have accepted had the tree held only its ``size`` best nodes."""
    if not verdict.accepted_nodes:
        return 0
    probs = tree.draft_probs.tolist()
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    rank = {node: r for r, node in enumerate(order)}
    count = 0
    for node in verdict.accepted_nodes:
        if rank[node] >= size:
            break
        count += 1
    return count

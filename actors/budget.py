"""Adaptive draft budget: how many nodes to draft per sequence this step, from measurements.

Throughput of a step with tree size ``s`` for ``B`` sequences is

    B · (1 + accepted(s)) / (draft_time(s) + verify_time(B · (1 + s)))

where ``accepted(s)`` is the running mean of accepted drafted tokens observed at that size,
``draft_time(s)`` the running mean time the drafter took, and ``verify_time(n) = a + b·n`` a
least-squares fit of the verifier's forward time against the tokens it processed. The budget
picks the size with the best expected throughput, so it falls to 0 (plain decoding) when the
verifier is saturated (large batches) or drafts stop being accepted. A size is re-tried now
and then so a change in the text is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.messages import DraftBudget

EMA = 0.2  # weight of the newest observation in running means
EXPLORE_EVERY = 16  # steps between tries of a neighbouring size


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
        self.sizes = (
            [0] + [s for s in (2, 4, 8, 16, 32, 64) if s < max_nodes] + [max_nodes] if max_nodes else [0]
        )
        self.accepted = {s: None for s in self.sizes}  # running mean accepted drafts per sequence
        self.draft_seconds = {s: 0.0 for s in self.sizes}
        self.verify_cost = LinearCost()
        self.accepted[0] = 0.0
        self.steps = 0
        self.current = self.sizes[-1]

    def plan(self, batch_size: int) -> DraftBudget:
        """The budget for every sequence of a step of ``batch_size`` sequences."""
        self.steps += 1
        if not self.adaptive:
            self.current = self.sizes[-1]
        else:
            untried = [s for s in self.sizes if self.accepted[s] is None]
            if untried:
                self.current = untried[-1]
            else:
                self.current = max(self.sizes, key=lambda s: self._throughput(s, batch_size))
                if self.steps % EXPLORE_EVERY == 0:
                    self.current = self._neighbour(self.current)
        return DraftBudget(max_nodes=self.current, max_depth=self.max_depth)

    def observe(self, step_tokens: int, draft_seconds: float, verify_seconds: float, accepted: float) -> None:
        """Record a step: tokens the verifier processed, the two timings, mean accepted drafts."""
        size = self.current
        self.verify_cost.observe(step_tokens, verify_seconds)
        previous = self.accepted[size]
        self.accepted[size] = accepted if previous is None else (1 - EMA) * previous + EMA * accepted
        self.draft_seconds[size] = (1 - EMA) * self.draft_seconds[size] + EMA * draft_seconds

    def _throughput(self, size: int, batch_size: int) -> float:
        seconds = self.draft_seconds[size] + self.verify_cost.predict(batch_size * (1 + size))
        return batch_size * (1 + (self.accepted[size] or 0.0)) / max(seconds, 1e-6)

    def _neighbour(self, size: int) -> int:
        i = self.sizes.index(size)
        return (
            self.sizes[i + 1]
            if (self.steps // EXPLORE_EVERY) % 2 and i + 1 < len(self.sizes)
            else self.sizes[max(i - 1, 0)]
        )

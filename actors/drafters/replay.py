"""Replay drafts: a hint of the tokens a sequence is expected to produce (an RL sample's previous
rollout with the same seed) drafted as a chain, merged into the configured drafter's tree.

:class:`ReplayDrafter` wraps any drafter (or none). A hint is given with ``add`` and is aligned
with the committed tokens: while everything committed since agrees with it, the rest of it is
proposed as a chain from the last committed token; at the first committed token that differs,
the hint is dead and the inner drafter drafts alone. The chain's confidence per edge is the
hints' measured agreement with what was committed (every committed token a trial), so the
budget (:meth:`~actors.messages.DraftBudget.admits`) sizes it like any other draft. Verification
is the verifier's ordinary lossless one: a hint never changes the output, only the step count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from actors.drafters.base import Drafter
from actors.messages import DraftBudget, DraftTree, Verdict

#: no edge is called certain: path confidences stay strictly decreasing along the chain.
_MAX_RATE = 0.995


@dataclass
class _Hint:
    """A sequence's hint and how far the committed tokens have followed it."""

    tokens: list[int]
    at: int = 0  # tokens[:at] have been committed; tokens[at] is expected next

    def ahead(self) -> list[int]:
        return self.tokens[self.at :]


class ReplayDrafter(Drafter):
    """Drafts each sequence's hint as a chain, merged with ``inner``'s tree.

    The merged tree is the union of both (a hint token the inner drafter also proposed is one
    node), nodes chosen best-first by path confidence within the budget. A chain node's
    confidence is ``rate ** depth`` (or the inner drafter's, when higher); an inner node that
    branches off the chain is only accepted if the chain was rejected there, so its confidence
    is scaled by ``1 - rate``. Verdicts reach the inner drafter rewritten as if its own tree had
    been verified (its accepted path is the committed tokens walked through its tree), so its
    acceptance statistics stay its own.

    Args:
        inner: the configured drafter, or None to draft hints only.
        prior: the agreement rate assumed before any hint was checked.
        decay: per-trial forgetting of the agreement statistics (window ~ 1 / (1 - decay)).
    """

    def __init__(self, inner: Drafter | None, prior: float = 0.9, decay: float = 0.999):
        if not 0 < prior < 1 or not 0 < decay <= 1:
            raise ValueError(f"need 0 < prior < 1 and 0 < decay <= 1; got {prior}, {decay}")
        self.inner = inner
        self.decay = decay
        self._prior_trials = 4.0
        self._prior_hits = prior * self._prior_trials
        self._hits = self._trials = 0.0
        self._hints: dict[int, _Hint] = {}
        self._lengths: dict[int, int] = {}  # committed tokens per sequence
        #: seq_id -> {committed length at the tree's root: the inner tree merged there}
        self._merged: dict[int, dict[int, DraftTree]] = {}

    @property
    def wants_topk(self) -> int:  # type: ignore[override]
        return self.inner.wants_topk if self.inner is not None else 0

    @property
    def wants_hidden(self) -> bool:  # type: ignore[override]
        return self.inner.wants_hidden if self.inner is not None else False

    @property
    def rate(self) -> float:
        """The measured chance that a hint's next token is the one committed."""
        rate = (self._hits + self._prior_hits) / (self._trials + self._prior_trials)
        return min(rate, _MAX_RATE)

    def live_hints(self) -> int:
        """Sequences whose hint still agrees with every token committed since it was given."""
        return len(self._hints)

    # -- the Drafter contract -------------------------------------------------------------

    def add(self, seq_id: int, prompt_ids: list[int], hint: list[int] | None = None) -> None:
        """Start tracking a sequence; ``hint``: the tokens expected to follow ``prompt_ids``."""
        if self.inner is not None:
            self.inner.add(seq_id, prompt_ids)
        self._lengths[seq_id] = len(prompt_ids)
        self._merged[seq_id] = {}
        self._hints.pop(seq_id, None)
        if hint:
            self._hints[seq_id] = _Hint(list(hint))

    def release(self, seq_id: int) -> None:
        if self.inner is not None:
            self.inner.release(seq_id)
        for table in (self._hints, self._lengths, self._merged):
            table.pop(seq_id, None)

    def load_weights(self, state_dict: dict) -> None:
        if self.inner is None:
            super().load_weights(state_dict)  # refuses
        self.inner.load_weights(state_dict)

    def commit(self, verdicts: list[Verdict]) -> None:
        if self.inner is not None:
            self.inner.commit([self._for_inner(v) for v in verdicts])
        for verdict in verdicts:
            self._follow(verdict.seq_id, verdict.tokens)
            self._lengths[verdict.seq_id] += len(verdict.tokens)

    def propose(
        self, seq_ids: list[int], budgets: list[DraftBudget], assume: list[list[int] | None] | None = None
    ) -> list[DraftTree]:
        assume = assume or [None] * len(seq_ids)
        if self.inner is not None:
            trees = self.inner.propose(seq_ids, budgets, assume)
        else:
            trees = [DraftTree.empty(s) for s in seq_ids]
        return [
            self._with_chain(tree, budget, assumed)
            for tree, budget, assumed in zip(trees, budgets, assume, strict=True)
        ]

    # -- hints ------------------------------------------------------------------------------

    def _follow(self, seq_id: int, tokens: list[int]) -> None:
        """Check committed ``tokens`` against the hint: each agreeing token a hit, the first
        disagreeing one a miss that ends the hint."""
        hint = self._hints.get(seq_id)
        if hint is None:
            return
        ahead = hint.ahead()
        agree = 0
        while agree < min(len(tokens), len(ahead)) and tokens[agree] == ahead[agree]:
            agree += 1
        missed = agree < min(len(tokens), len(ahead))
        for hit in [True] * agree + [False] * missed:
            self._hits = self._hits * self.decay + hit
            self._trials = self._trials * self.decay + 1
        hint.at += agree
        if missed or hint.at >= len(hint.tokens):
            del self._hints[seq_id]

    def _chain(self, seq_id: int, assumed: list[int] | None) -> tuple[list[int], tuple[int, ...] | None]:
        """The hint tokens to draft, and the tokens the tree assumes (None: no chain): after
        ``assumed`` (asynchronous speculation), the hint's next token is the guess."""
        hint = self._hints.get(seq_id)
        if hint is None:
            return [], None
        ahead = hint.ahead()
        if assumed is None:
            return ahead, ()
        if ahead[: len(assumed)] != list(assumed) or len(ahead) <= len(assumed):
            return [], None  # the hint would be dead (or done) by then
        return ahead[len(assumed) + 1 :], (*assumed, ahead[len(assumed)])

    def _with_chain(self, tree: DraftTree, budget: DraftBudget, assumed: list[int] | None) -> DraftTree:
        seq_id = tree.seq_id
        chain, assumed_tokens = self._chain(seq_id, assumed)
        if assumed_tokens is None or budget.max_nodes <= 0 or budget.max_depth <= 0:
            return tree
        if tree.assumed != assumed_tokens:
            tree = DraftTree.empty(seq_id)  # the inner drafter guessed another next token
        chain = chain[: min(budget.max_nodes, budget.max_depth)]
        root = self._lengths[seq_id] + len(assumed_tokens)
        merged = self._merged[seq_id]
        for stale in [key for key in merged if key <= self._lengths[seq_id]]:
            del merged[stale]
        merged[root] = tree
        return replace(merge_chain(tree, chain, self.rate, budget), assumed=assumed_tokens)

    def _for_inner(self, verdict: Verdict) -> Verdict:
        """``verdict`` as the inner drafter would have seen it for its own tree: the committed
        tokens walked through that tree. (Nodes past the committed tokens count as misses; the
        topk rows are the merged tree's, which only orders the inner drafter's overwrites.)"""
        merged = self._merged.get(verdict.seq_id, {})
        tree = merged.pop(self._lengths.get(verdict.seq_id, -1), None)
        if tree is None:
            return verdict  # the inner drafter's own tree was verified
        children = {
            (p, t): node for node, (p, t) in enumerate(zip(tree.parents.tolist(), tree.tokens.tolist()))
        }
        path, parent = [], -1
        for token in verdict.tokens:
            node = children.get((parent, token))
            if node is None:
                break
            path.append(node)
            parent = node
        return replace(verdict, accepted_nodes=path, num_drafted=len(tree))


def merge_chain(tree: DraftTree, chain: list[int], rate: float, budget: DraftBudget) -> DraftTree:
    """The union of ``tree`` and ``chain`` (a path from the root), best-first within ``budget``.

    Path confidences: chain node at depth d ``max(rate ** d, tree's)``; a tree node off the chain
    keeps the tree's, times ``1 - rate`` when it branches off where the chain goes on (it is
    accepted only if the chain is not). Both are non-increasing along every path, so the nodes
    taken best-first (ties: shallower first) always include their parents.
    """
    if not chain:
        return tree
    tokens, parents, confs, depths = [], [], [], []
    node_of: dict[tuple[int, int], int] = {}
    competing: set[int] = set()  # nodes (-1: the root) whose child continues the chain

    def add(token: int, parent: int, conf: float) -> int:
        node = len(tokens)
        tokens.append(token)
        parents.append(parent)
        confs.append(conf)
        depths.append(1 if parent < 0 else depths[parent] + 1)
        node_of[(parent, token)] = node
        return node

    parent, conf = -1, 1.0
    for token in chain:
        competing.add(parent)
        conf *= rate
        parent = add(token, parent, conf)
    chain_nodes = set(range(len(chain)))
    scale = [1.0] * len(chain)  # per node: the factor its inner confidences carry
    union_of: list[int] = []
    for inner_conf, token, inner_parent in zip(
        tree.path_confidences(), tree.tokens.tolist(), tree.parents.tolist()
    ):
        parent = union_of[inner_parent] if inner_parent >= 0 else -1
        node = node_of.get((parent, token))
        if node is not None and node in chain_nodes:
            confs[node] = max(confs[node], inner_conf)
        else:
            factor = (1 - rate) if parent in competing else (scale[parent] if parent >= 0 else 1.0)
            node = add(token, parent, inner_conf * factor)
            scale.append(factor)
        union_of.append(node)
    chosen: list[int] = []
    expected = 1.0  # tokens the step is expected to yield: the verifier's own + accepted drafts
    for node in sorted(range(len(tokens)), key=lambda n: (-confs[n], depths[n], n)):
        if not budget.admits(confs[node], expected, len(chosen)):
            break
        chosen.append(node)
        expected += confs[node]
    order = sorted(chosen, key=lambda n: (depths[n], n))  # BFS; parents come first
    index = {node: i for i, node in enumerate(order)}
    probs = [confs[n] / (confs[parents[n]] if parents[n] >= 0 else 1.0) for n in order]
    return DraftTree(
        tree.seq_id,
        torch.tensor([tokens[n] for n in order], dtype=torch.long),
        torch.tensor([index[parents[n]] if parents[n] >= 0 else -1 for n in order], dtype=torch.long),
        torch.tensor([min(p, 1.0) for p in probs], dtype=torch.float32),
        tree.assumed,
    )

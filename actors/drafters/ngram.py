"""Prompt lookup plus token recycling (training-free), optionally with trained heads, merged into
one draft tree per step.

Prompt lookup proposes what followed earlier occurrences of the history's last n tokens; token
recycling (Luo et al. 2024, "Turning Trash into Treasure") proposes each token's most likely
successors as the verifier last saw them (its top-k, which every Verdict carries). Given Medusa
heads (``ngram+heads:PATH``), head ``d`` proposes its top tokens for every node at depth ``d``. All
feed one best-first search over path confidence, whose per-source calibration is learned from
verdicts.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from itertools import islice

import torch

from actors.drafters.base import Drafter
from actors.drafters.heads import Guesses, HeadsDrafter
from actors.messages import DraftBudget, DraftTree, Verdict

#: no edge is ever called certain: keeps path confidences strictly decreasing along a path.
_MAX_EDGE_CONFIDENCE = 0.99

# Candidate children while a tree is built: token -> [confidence, credits, pointers, n], where
# credits are the (edge kind, raw score) pairs the node is judged by, pointers the history
# positions holding this token on the lookup continuations it follows (None: recycled only),
# and n the match length of those continuations.
_Children = dict[int, list]
#: scored candidates from one source: (tokens, raw scores).
_Scored = tuple[list[int], list[float]]


class _Sequence:
    """One sequence's committed history, its n-gram index and the trees last proposed for it."""

    __slots__ = ("history", "index", "proposed")

    def __init__(self) -> None:
        self.history: list[int] = []
        #: n-gram (a tuple, 1 <= n <= max_ngram) -> positions of its last token, oldest first.
        self.index: dict[tuple[int, ...], list[int]] = {}
        #: history length at a tree's root -> (parents, credits) of the nonempty tree proposed
        #: there, for learning acceptance when its verdict is committed.
        self.proposed: dict[int, tuple[list[int], list[tuple]]] = {}

    def extend(self, tokens: list[int], max_ngram: int) -> None:
        """Append committed tokens and index every n-gram they end."""
        history, index = self.history, self.index
        for token in tokens:
            history.append(token)
            end = len(history) - 1
            for n in range(1, min(max_ngram, end + 1) + 1):
                index.setdefault(tuple(history[end - n + 1 :]), []).append(end)

    def truncate(self, length: int, max_ngram: int) -> None:
        """Undo :meth:`extend` back to ``length`` tokens (the index entries are the newest)."""
        history, index = self.history, self.index
        for end in range(len(history) - 1, length - 1, -1):
            for n in range(1, min(max_ngram, end + 1) + 1):
                key = tuple(history[end - n + 1 : end + 1])
                index[key].pop()
                if not index[key]:
                    del index[key]
        del history[length:]


class NgramDrafter(Drafter):
    """Drafts token trees from prompt lookup and a recycled adjacency table; needs no model.

    Edge confidence = raw score x a calibration factor per edge kind. Raw scores: for lookup
    edges, the share of matched continuations that agree on the token; for recycled edges, the
    verifier's stored probability; for heads, the head's probability. Kinds: lookup first edge by
    match length n, lookup follow-on edge by n, recycled edge, then one per head. Each factor is
    the decayed ratio of accepted drafts to the raw score mass drafted, so over- or
    under-confident sources correct themselves. A node's ``draft_probs`` entry is its edge
    confidence (as :class:`DraftTree` defines it), so ``path_confidences()`` — the product from the
    root, which the tree is built best-first by — reads what the search used.

    Args:
        max_ngram: longest suffix n-gram looked up (n runs from it down to 1).
        topk: successors kept per token in the recycling table; also ``wants_topk``.
        threshold: nodes whose path confidence falls below it are not drafted (SpecDec++-style
            stopping); 0 fills the budget whenever candidates exist.
        max_matches: most recent occurrences used per n-gram length (bounds lookup cost).
        lookup_prior: initial confidence of a lookup edge whose continuations all agree.
        recycle_prior: initial factor applied to the verifier's recycled probabilities.
        decay: per-trial forgetting of the acceptance statistics (window ~ 1 / (1 - decay)).
        heads: trained heads whose guesses join the tree (raw score: the head's probability).
        heads_prior: initial factor applied to the heads' probabilities.
    """

    wants_topk: int = 8

    def __init__(
        self,
        max_ngram: int = 4,
        topk: int = 8,
        threshold: float = 0.02,
        max_matches: int = 8,
        lookup_prior: float = 0.6,
        recycle_prior: float = 0.6,
        decay: float = 0.995,
        heads: HeadsDrafter | None = None,
        heads_prior: float = 0.8,
    ) -> None:
        if max_ngram < 1 or topk < 0 or max_matches < 1:
            raise ValueError(
                f"need max_ngram >= 1, topk >= 0, max_matches >= 1; got {max_ngram}, {topk}, {max_matches}"
            )
        if not 0 <= threshold < 1 or not 0 < decay <= 1:
            raise ValueError(f"need 0 <= threshold < 1 and 0 < decay <= 1; got {threshold}, {decay}")
        self.max_ngram, self.threshold = max_ngram, threshold
        self.max_matches, self.decay = max_matches, decay
        self.wants_topk = topk
        self._sequences: dict[int, _Sequence] = {}
        #: token -> (its verifier top-k successors, their probabilities); shared: one model.
        self._adjacency: dict[int, tuple[list[int], list[float]]] = {}
        # edge kinds: [0, n) lookup first edge for match length n=k+1, [n, 2n) follow-on, 2n recycled.
        # then 2n + 1 + d: head d's guesses.
        self._recycle_kind = 2 * max_ngram
        priors = [lookup_prior] * max_ngram + [min(1.0, lookup_prior + 0.15)] * max_ngram + [recycle_prior]
        self.heads = heads
        if heads is not None:
            priors += [heads_prior] * heads.heads.num_heads
            self.wants_hidden = True
        self._prior_mass = 4.0
        self._prior_hits = [self._prior_mass * p for p in priors]
        self._hits = [0.0] * len(priors)
        self._mass = [0.0] * len(priors)
        self._factor = list(priors)

    # -- the Drafter contract -------------------------------------------------------------

    def add(self, seq_id: int, prompt_ids: list[int]) -> None:
        sequence = _Sequence()
        sequence.extend(list(prompt_ids), self.max_ngram)
        self._sequences[seq_id] = sequence
        if self.heads is not None:
            self.heads.add(seq_id, prompt_ids)

    def release(self, seq_id: int) -> None:
        self._sequences.pop(seq_id, None)
        if self.heads is not None:
            self.heads.release(seq_id)

    def load_weights(self, state_dict: dict) -> None:
        if self.heads is None:
            super().load_weights(state_dict)  # refuses
        self.heads.load_weights(state_dict)

    def commit(self, verdicts: list[Verdict]) -> None:
        if self.heads is not None:
            self.heads.commit(verdicts)
        for verdict in verdicts:
            sequence = self._sequence(verdict.seq_id)
            self._learn_acceptance(sequence, verdict)
            self._learn_adjacency(verdict)
            sequence.extend(verdict.tokens, self.max_ngram)

    def propose(
        self, seq_ids: list[int], budgets: list[DraftBudget], assume: list[list[int] | None] | None = None
    ) -> list[DraftTree]:
        if len(seq_ids) != len(budgets):
            raise ValueError(f"{len(seq_ids)} sequences but {len(budgets)} budgets")
        assume = assume or [None] * len(seq_ids)
        guesses: dict[int, Guesses] = {}
        if self.heads is not None:  # heads guess after the committed tokens, so not when assuming
            fresh = [s for s, b, tokens in zip(seq_ids, budgets, assume) if b.max_nodes and tokens is None]
            guesses = self.heads.guesses(fresh)
        return [
            self._propose_one(seq_id, budget, guesses.get(seq_id))
            if tokens is None
            else self._propose_assuming(seq_id, budget, tokens)
            for seq_id, budget, tokens in zip(seq_ids, budgets, assume, strict=True)
        ]

    def _propose_assuming(self, seq_id: int, budget: DraftBudget, assumed: list[int]) -> DraftTree:
        """A tree rooted after ``assumed`` and this drafter's best guess at the token after it."""
        sequence = self._sequence(seq_id)
        committed = len(sequence.history)
        sequence.extend(assumed, self.max_ngram)
        try:
            candidates = self._root_children(sequence) if sequence.history else {}
            if not candidates:
                return DraftTree.empty(seq_id)
            guess = max(candidates, key=lambda token: candidates[token][0])
            sequence.extend([guess], self.max_ngram)
            tree = self._propose_one(seq_id, budget)
        finally:
            sequence.truncate(committed, self.max_ngram)
        return replace(tree, assumed=(*assumed, guess))

    # -- building a tree --------------------------------------------------------------------

    def _sequence(self, seq_id: int) -> _Sequence:
        try:
            return self._sequences[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id} was never added (or was released)") from None

    def _propose_one(self, seq_id: int, budget: DraftBudget, guesses: Guesses | None = None) -> DraftTree:
        sequence = self._sequence(seq_id)
        sequence.proposed.pop(len(sequence.history), None)
        if budget.max_nodes <= 0 or budget.max_depth <= 0 or not sequence.history:
            return DraftTree.empty(seq_id)
        tokens, parents, depths, confidences, credits = [], [], [], [], []
        heap: list[tuple] = []
        self._push(heap, self._root_children(sequence, guesses), -1, 1.0, 1)
        expected = 1.0  # tokens the step is expected to yield: the verifier's own + accepted drafts
        while heap:
            neg_conf, _, parent, token, depth, kind_n, pointers, credit = heapq.heappop(heap)
            if not budget.admits(-neg_conf, expected, len(tokens)):
                break  # best-first: every later node is less confident
            expected -= neg_conf
            node = len(tokens)
            tokens.append(token)
            parents.append(parent)
            depths.append(depth)
            confidences.append(-neg_conf)
            credits.append(credit)
            if depth < budget.max_depth:
                children = self._children(sequence.history, token, pointers, kind_n, guesses, depth)
                self._push(heap, children, node, -neg_conf, depth + 1)
        if not tokens:
            return DraftTree.empty(seq_id)
        return self._to_bfs_tree(sequence, seq_id, tokens, parents, depths, confidences, credits)

    def _push(
        self, heap: list[tuple], children: _Children, parent: int, path_conf: float, depth: int
    ) -> None:
        """Queue ``children`` of tree node ``parent`` (-1: the last committed token) by path confidence."""
        for token, (conf, credit, pointers, kind_n) in children.items():
            child_conf = path_conf * conf
            if child_conf >= self.threshold and child_conf > 0:
                # len(heap) + the parent breaks ties deterministically without comparing lists
                entry = (
                    -child_conf,
                    (parent, len(heap), token),
                    parent,
                    token,
                    depth,
                    kind_n,
                    pointers,
                    credit,
                )
                heapq.heappush(heap, entry)

    def _root_children(self, sequence: _Sequence, guesses: Guesses | None = None) -> _Children:
        """Children of the last committed token: lookup by its suffix n-grams, longest first,
        then its recycled successors and head 0's guesses."""
        history, children = sequence.history, {}
        for n in range(min(self.max_ngram, len(history)), 0, -1):
            ends = sequence.index.get(tuple(history[-n:]), ())
            # the newest end is the suffix itself, which has no continuation yet
            pointers = list(islice((e for e in reversed(ends) if e + 1 < len(history)), self.max_matches))
            for token, child in self._lookup_children(history, pointers, n - 1, n).items():
                children.setdefault(token, child)  # a longer match wins
        self._add_scored(children, self._adjacency.get(history[-1]), self._recycle_kind)
        self._add_guessed(children, guesses, 0)
        return children

    def _children(
        self,
        history: list[int],
        token: int,
        pointers: list[int] | None,
        n: int,
        guesses: Guesses | None,
        depth: int,
    ) -> _Children:
        """Children of a drafted node at ``depth``: its lookup continuations, its recycled
        successors, and head ``depth``'s guesses."""
        children = self._lookup_children(history, pointers, self.max_ngram + n - 1, n) if pointers else {}
        self._add_scored(children, self._adjacency.get(token), self._recycle_kind)
        self._add_guessed(children, guesses, depth)
        return children

    def _lookup_children(self, history: list[int], pointers: list[int], kind: int, n: int) -> _Children:
        """Group the continuations at ``pointers`` by next token; score = share agreeing."""
        groups: dict[int, list[int]] = {}
        for position in pointers:
            if position + 1 < len(history):
                groups.setdefault(history[position + 1], []).append(position + 1)
        factor, children = self._factor[kind], {}
        for token, positions in groups.items():
            share = len(positions) / len(pointers)
            conf = min(_MAX_EDGE_CONFIDENCE, share * factor)
            children[token] = [conf, ((kind, share),), positions, n]
        return children

    def _add_guessed(self, children: _Children, guesses: Guesses | None, head: int) -> None:
        """Merge head ``head``'s guesses (when there are heads and that many)."""
        if guesses is not None and head < len(guesses[0]):
            probs, tokens = guesses[0][head], guesses[1][head]
            self._add_scored(children, (tokens, probs), self._recycle_kind + 1 + head)

    def _add_scored(self, children: _Children, candidates: _Scored | None, kind: int) -> None:
        """Merge scored candidates (tokens, probabilities) as edges of ``kind``; agreeing sources
        combine as a noisy-or."""
        if candidates is None:
            return
        factor = self._factor[kind]
        for successor, prob in zip(*candidates, strict=True):
            conf = min(_MAX_EDGE_CONFIDENCE, prob * factor)
            child = children.get(successor)
            if child is None:
                children[successor] = [conf, ((kind, prob),), None, 0]
            else:
                child[0] = min(_MAX_EDGE_CONFIDENCE, 1 - (1 - child[0]) * (1 - conf))
                child[1] = child[1] + ((kind, prob),)

    @staticmethod
    def _to_bfs_tree(
        sequence: _Sequence,
        seq_id: int,
        tokens: list[int],
        parents: list[int],
        depths: list[int],
        confidences: list[float],
        credits: list[tuple],
    ) -> DraftTree:
        """Reorder best-first nodes into BFS order (stable by depth); parents keep ``< i``."""
        order = sorted(range(len(tokens)), key=depths.__getitem__)
        new_index = {old: new for new, old in enumerate(order)}
        bfs_parents = [new_index[parents[i]] if parents[i] >= 0 else -1 for i in order]
        sequence.proposed[len(sequence.history)] = (bfs_parents, [credits[i] for i in order])
        # the search ranks path confidences; the tree carries each edge's (path / parent's path)
        edges = [confidences[i] / (confidences[parents[i]] if parents[i] >= 0 else 1.0) for i in order]
        return DraftTree(
            seq_id,
            torch.tensor([tokens[i] for i in order], dtype=torch.long),
            torch.tensor(bfs_parents, dtype=torch.long),
            torch.tensor(edges, dtype=torch.float32),
        )

    # -- learning from verdicts -----------------------------------------------------------

    def _learn_acceptance(self, sequence: _Sequence, verdict: Verdict) -> None:
        """Credit each drafted node whose parent was accepted: a trial of its edge kinds."""
        root = len(sequence.history)
        tree = sequence.proposed.pop(root, None)
        for stale in [key for key in sequence.proposed if key <= root]:
            del sequence.proposed[stale]
        if tree is None or len(tree[0]) < verdict.num_drafted:
            return  # not the tree we proposed (or none): nothing to learn from
        # The engine may have verified only a prefix of it (BudgetController.trim).
        parents, credits = tree[0][: verdict.num_drafted], tree[1]
        accepted = set(verdict.accepted_nodes)
        for node, parent in enumerate(parents):
            if parent < 0 or parent in accepted:
                hit = node in accepted
                for kind, score in credits[node]:
                    self._update_factor(kind, score, hit)

    def _update_factor(self, kind: int, score: float, hit: bool) -> None:
        self._hits[kind] = self._hits[kind] * self.decay + hit
        self._mass[kind] = self._mass[kind] * self.decay + score
        self._factor[kind] = (self._hits[kind] + self._prior_hits[kind]) / (
            self._mass[kind] + self._prior_mass
        )

    def _learn_adjacency(self, verdict: Verdict) -> None:
        """Overwrite each step input's successors with the verifier's newest top-k."""
        if (
            not self.wants_topk
            or verdict.context_tokens is None
            or verdict.context_topk is None
            or verdict.context_topk_probs is None
        ):
            return
        inputs = verdict.context_tokens.tolist()
        topk = verdict.context_topk[:, : self.wants_topk].tolist()
        probs = verdict.context_topk_probs[:, : self.wants_topk].float().tolist()
        for row in self._rows_accepted_last(verdict, len(inputs)):
            self._adjacency[inputs[row]] = (topk[row], probs[row])

    @staticmethod
    def _rows_accepted_last(verdict: Verdict, num_rows: int) -> list[int]:
        """Row order for overwriting: rows on the accepted path last, so their context wins.

        When the rows are [last committed token, tree nodes...] (``num_drafted + 1`` rows),
        row 0 and the accepted nodes' rows form the accepted path; otherwise keep input order.
        """
        if num_rows != verdict.num_drafted + 1 or not verdict.accepted_nodes:
            return list(range(num_rows))
        on_path = {0} | {node + 1 for node in verdict.accepted_nodes}
        return [r for r in range(num_rows) if r not in on_path] + sorted(on_path)

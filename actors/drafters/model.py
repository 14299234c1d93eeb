"""Model drafter: a small causal LM (or the verifier's first layers) drafts trees by top-k
expansion, one forward per tree level, with its own KV cache.

The tree grows best-first by path probability (EAGLE-2 style): each level expands the most
likely frontier nodes into their top-k children, and nodes below the confidence threshold
are never drafted (SpecDec++-style stopping).

A draft vocabulary (``vocab``) keeps only the first rows of the LM head: SmolLM2's 49k-row head
costs as much as several of its layers, and a drafter needs only the tokens it is likely to be
right about.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers import PreTrainedModel

from actors.cpu_linear import linear_like
from actors.drafters.base import Drafter
from actors.messages import DraftBudget, DraftTree, Verdict
from actors.tree_model import SlotTable, TreeInput, TreeModel, release_sequence


@dataclass
class _DraftSequence:
    slot: int
    kv_len: int
    pending: list[int]  # committed tokens not yet in the drafter's cache
    next_probs: torch.Tensor | None = None  # ``[V]`` after the cached tokens, once computed


@dataclass
class _Tree:
    """A tree under construction (nodes appended level by level, hence BFS order)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # path probabilities
    depths: list[int] = field(default_factory=list)


class ModelDrafter(Drafter):
    """Drafts with ``model`` (sharing the verifier's tokenizer).

    Args:
        model: the draft causal LM, on its device.
        max_batch_size: sequences held at once.
        max_model_len: cache positions per sequence.
        branching: children considered per expanded node (top-k).
        threshold: smallest path probability worth drafting.
        attention: tree attention backend.
        decoder: ``auto`` or ``transformers`` (see :class:`~actors.tree_model.TreeModel`).
        assistant_model: the model to hand Hugging Face as ``assistant_model`` in benchmarks
            (``model`` itself for a standalone drafter; None for a view of the verifier).
        vocab: draft only among token ids ``0 .. vocab - 1`` (0 = every token).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_batch_size: int,
        max_model_len: int,
        branching: int = 4,
        threshold: float = 0.05,
        attention: str = "auto",
        decoder: str = "auto",
        assistant_model: PreTrainedModel | None = None,
        vocab: int = 0,
    ):
        self.runner = TreeModel(model, max_batch_size, max_model_len, attention, decoder)
        self.head = draft_head(model.lm_head, vocab)
        self.slots = SlotTable(max_batch_size)
        self.branching = branching
        self.threshold = threshold
        self.assistant_model = assistant_model
        self.sequences: dict[int, _DraftSequence] = {}

    def add(self, seq_id: int, prompt_ids: list[int]) -> None:
        self.sequences[seq_id] = _DraftSequence(self.slots.claim(seq_id), 0, list(prompt_ids))

    def release(self, seq_id: int) -> None:
        release_sequence(self.runner, self.slots, self.sequences, seq_id)

    def load_weights(self, state_dict: dict) -> None:
        """Copy ``state_dict`` into the draft model in place (shapes must match). KV caches built
        with the old weights go stale: callers re-seed their sequences (see DrafterWorker)."""
        model = self.runner.model
        if self.assistant_model is None:
            raise ValueError("this drafter is a view of the verifier; it has no weights of its own")
        result = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]  # tied heads
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit the drafter: missing {missing}, unexpected {result.unexpected_keys}"
            )

    def commit(self, verdicts: list[Verdict]) -> None:
        for verdict in verdicts:
            self.sequences[verdict.seq_id].pending += verdict.tokens

    @torch.inference_mode()
    def propose(
        self, seq_ids: list[int], budgets: list[DraftBudget], assume: list[list[int] | None] | None = None
    ) -> list[DraftTree]:
        assume = assume or [None] * len(seq_ids)
        assumed = {s: list(a) for s, a in zip(seq_ids, assume) if a is not None}
        saved = {s: replace(self.sequences[s]) for s in assumed}  # committed state, restored below
        for seq_id, tokens in assumed.items():
            self.sequences[seq_id].pending = self.sequences[seq_id].pending + tokens
        roots = self._catch_up(seq_ids)
        if assumed:  # feed each guess at the verifier's next token, then draft below it
            for seq_id in assumed:
                assumed[seq_id].append(int(roots[seq_id].argmax()))
                self.sequences[seq_id].pending = assumed[seq_id][-1:]
            roots |= self._catch_up(list(assumed))
        trees = {seq_id: _Tree() for seq_id in seq_ids}
        limits = dict(zip(seq_ids, budgets))
        # candidates[seq_id] = [(score, token, parent)] for the next level
        candidates = {s: self._children(roots[s], -1, 1.0) for s in seq_ids}
        for depth in range(1, max(b.max_depth for b in budgets) + 1):
            level = {s: self._select(trees[s], candidates[s], limits[s], depth) for s in seq_ids}
            grow = {
                s: nodes for s, nodes in level.items() if nodes and self._has_room(trees[s], limits[s], depth)
            }
            if not grow:
                break
            probs = self._expand(grow, trees)
            candidates = {s: [] for s in seq_ids}
            for s, nodes in grow.items():
                for node, row in zip(nodes, probs[s]):
                    candidates[s] += self._children(row, node, trees[s].scores[node])
        # Back to the committed state; the assumed tokens' KV is left behind, to be overwritten.
        self.sequences |= saved
        return [self._as_draft(s, trees[s], tuple(assumed.get(s, ()))) for s in seq_ids]

    def _catch_up(self, seq_ids: list[int]) -> dict[int, torch.Tensor]:
        """Feed each sequence's pending tokens; return its next-token distribution ``[V]``."""
        inputs = []
        for seq_id in seq_ids:
            seq = self.sequences[seq_id]
            m = len(seq.pending)
            if m:  # nothing new: the distribution computed last time still holds
                ancestors = torch.ones(m, m, dtype=torch.bool).tril()
                positions = list(range(seq.kv_len, seq.kv_len + m))
                inputs.append(TreeInput(seq.slot, seq.kv_len, m, seq.pending, positions, ancestors))
        if inputs:
            hidden = self.runner.forward(inputs)
            last = torch.stack([hidden[row, len(item.tokens) - 1] for row, item in enumerate(inputs)])
            probs = self.head(last).float().softmax(dim=-1).cpu()
            fed = [s for s in seq_ids if self.sequences[s].pending]
            for seq_id, row in zip(fed, probs):
                seq = self.sequences[seq_id]
                seq.kv_len += len(seq.pending)
                seq.pending, seq.next_probs = [], row
        return {seq_id: self.sequences[seq_id].next_probs for seq_id in seq_ids}

    def _children(self, probs: torch.Tensor, parent: int, score: float) -> list[tuple[float, int, int]]:
        top = torch.topk(probs, self.branching)
        return [(score * p, t, parent) for p, t in zip(top.values.tolist(), top.indices.tolist())]

    def _select(self, tree: _Tree, candidates, budget: DraftBudget, depth: int) -> list[int]:
        """Add this level's candidates that are worth verifying; return their node indices."""
        if depth > budget.max_depth:
            return []
        chosen = []
        expected = 1.0 + sum(tree.scores)
        for candidate in sorted((c for c in candidates if c[0] >= self.threshold), reverse=True):
            if not budget.admits(candidate[0], expected, len(tree.tokens) + len(chosen)):
                break
            chosen.append(candidate)
            expected += candidate[0]
        chosen.sort(key=lambda c: c[2])  # group by parent; keeps parents[i] < i
        nodes = []
        for score, token, parent in chosen:
            nodes.append(len(tree.tokens))
            tree.tokens.append(token)
            tree.parents.append(parent)
            tree.scores.append(score)
            tree.depths.append(depth)
        return nodes

    @staticmethod
    def _has_room(tree: _Tree, budget: DraftBudget, depth: int) -> bool:
        return depth < budget.max_depth and len(tree.tokens) < budget.max_nodes

    def _expand(self, grow: dict[int, list[int]], trees: dict[int, _Tree]) -> dict[int, torch.Tensor]:
        """One forward over this level's new nodes; their next-token distributions."""
        inputs = []
        for seq_id, nodes in grow.items():
            seq, tree = self.sequences[seq_id], trees[seq_id]
            size = len(tree.tokens)
            ancestors = torch.zeros(len(nodes), size, dtype=torch.bool)
            for row, node in enumerate(nodes):
                while node >= 0:
                    ancestors[row, node] = True
                    node = tree.parents[node]
            tokens = [tree.tokens[n] for n in nodes]
            positions = [seq.kv_len + tree.depths[n] - 1 for n in nodes]
            inputs.append(TreeInput(seq.slot, seq.kv_len, size, tokens, positions, ancestors))
        hidden = self.runner.forward(inputs)
        out = {}
        for row, (seq_id, nodes) in enumerate(grow.items()):
            out[seq_id] = self.head(hidden[row, : len(nodes)]).float().softmax(dim=-1).cpu()
        return out

    @staticmethod
    def _as_draft(seq_id: int, tree: _Tree, assumed: tuple[int, ...]) -> DraftTree:
        return DraftTree(
            seq_id,
            torch.tensor(tree.tokens, dtype=torch.long),
            torch.tensor(tree.parents, dtype=torch.long),
            torch.tensor(tree.scores, dtype=torch.float32),
            assumed,
        )


def draft_head(lm_head: nn.Linear, vocab: int) -> nn.Linear:
    """``lm_head`` itself, or a head of its kind over its first ``vocab`` rows, sharing their
    storage (so a hot swap that loads new weights into ``lm_head`` reaches it too)."""
    if not vocab or vocab >= lm_head.out_features:
        return lm_head
    bias = lm_head.bias[:vocab] if lm_head.bias is not None else None
    return linear_like(lm_head, lm_head.weight[:vocab], bias)

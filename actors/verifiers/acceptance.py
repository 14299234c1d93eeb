"""Deciding which drafted tokens the verifier keeps, without changing its output distribution.

Greedy: walk the tree from the root, following the child whose token is the verifier's argmax;
the first argmax with no matching child is the correction token.

Sampling (recursive rejection sampling over a tree): at a node whose target distribution is
``p``, try its children in order. Child ``c`` is accepted with probability ``p(c) / sum(p)``;
on rejection ``p(c)`` is set to 0 (the residual ``max(p - q, 0)`` for a proposal ``q`` that
put all its mass on ``c``) and the next child is tried. When every child is rejected, the
token is drawn from the residual. Whatever the candidates are, the token emitted at each
position is distributed exactly as ``p``: ``P(c_i) = prod_{j<i}(1 - p'(c_j)) · p'(c_i)`` telescopes
to ``p(c_i)``. The candidates may come from any drafter, deterministic or sampled.
"""

from __future__ import annotations

import torch

from actors.messages import DraftTree, SamplingParams


def children_lists(parents: list[int]) -> list[list[int]]:
    """``children[0]`` = roots; ``children[i + 1]`` = children of node ``i``."""
    children: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for node, parent in enumerate(parents):
        children[parent + 1].append(node)
    return children


def accept_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Accepted node indices (root → leaf) and the verifier's next token.

    Args:
        tree: the proposal.
        logits: ``[T + 1, V]``: row 0 is the distribution after the last committed token,
            row ``i + 1`` the distribution after node ``i``.
    """
    targets = logits.argmax(dim=-1).tolist()
    tokens = tree.tokens.tolist()
    children = children_lists(tree.parents.tolist())
    accepted: list[int] = []
    row = 0
    while True:
        match = next((c for c in children[row] if tokens[c] == targets[row]), None)
        if match is None:
            return accepted, targets[row]
        accepted.append(match)
        row = match + 1


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``[R, V]`` logits → ``[R, V]`` float32 probabilities after temperature, top-k and top-p."""
    scores = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def accept_sampling(
    tree: DraftTree, probs: torch.Tensor, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Recursive rejection sampling over the tree (see the module docstring).

    Args:
        tree: the proposal.
        probs: ``[T + 1, V]`` target probabilities, rows as in :func:`accept_greedy`.
        generator: the request's random generator (CPU).
    """
    tokens = tree.tokens.tolist()
    children = children_lists(tree.parents.tolist())
    accepted: list[int] = []
    row = 0
    while True:
        residual = probs[row].clone()
        next_row = None
        for child in children[row]:
            mass = float(residual.sum())
            chance = float(residual[tokens[child]]) / mass if mass > 0 else 0.0
            if float(torch.rand((), generator=generator)) < chance:
                next_row = child + 1
                accepted.append(child)
                break
            residual[tokens[child]] = 0.0
        if next_row is None:
            token = int(torch.multinomial(residual, 1, generator=generator))
            return accepted, token
        row = next_row

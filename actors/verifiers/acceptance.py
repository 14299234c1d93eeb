"""Deciding which drafted tokens the verifier keeps, without changing its output.

Both decoding modes reduce to one rule: first fix the token the verifier itself emits at every
position of the tree, then walk from the root along the child whose token matches it; the first
position with no matching child emits the verifier's token (the correction, or the bonus token
after a fully accepted path).

- Greedy: the verifier's token is the argmax of its logits at that node.
- Sampling: the verifier's token is drawn by the Gumbel-max trick with noise that depends only on
  the request's seed and the token's *position* in the sequence: ``argmax(log p(v) + G_pos(v))``
  is an exact sample of ``p``. Every node at the same depth shares its position's noise, so
  whichever path is accepted, each emitted token is exactly the one plain sampling with the same
  seed emits: speculative sampling reproduces non-speculative sampling token for token, and the
  output distribution is the verifier's whatever the drafts. For a candidate ``c`` the chance of
  acceptance is ``p(c)``, and of accepting one of a node's candidates ``sum(p(c_i))`` — the same
  as recursive rejection sampling (SpecInfer) with deterministic drafts — without its dependence
  of the random stream on the drafts.
"""

from __future__ import annotations

import torch

from actors.messages import DraftTree, SamplingParams

SEED_STRIDE = 1_000_003  # separates the noise streams of neighbouring seeds


def children_lists(parents: list[int]) -> list[list[int]]:
    """``children[0]`` = roots; ``children[i + 1]`` = children of node ``i``."""
    children: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for node, parent in enumerate(parents):
        children[parent + 1].append(node)
    return children


def accept_matching(tree: DraftTree, targets: list[int]) -> tuple[list[int], int]:
    """Accepted node indices (root → leaf) and the verifier's next token.

    Args:
        tree: the proposal.
        targets: ``T + 1`` tokens: ``targets[0]`` is the verifier's token after the last committed
            token, ``targets[i + 1]`` its token after node ``i``.
    """
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


def accept_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Greedy acceptance; ``logits: [T + 1, V]`` rows as in :func:`accept_matching`."""
    return accept_matching(tree, logits.argmax(dim=-1).tolist())


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``[R, V]`` logits → ``[R, V]`` float32 probabilities after temperature, top-k and top-p."""
    return target_scores(logits, params).softmax(dim=-1)


def target_scores(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``[R, V]`` logits → ``[R, V]`` float32 ``logits / temperature``, ``-inf`` outside the top-k
    and top-p sets (sampling only: ``temperature > 0``)."""
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
    return scores


def token_logprobs(logits: torch.Tensor, tokens: list[int], params: SamplingParams) -> list[float]:
    """Log-probability of ``tokens[r]`` under the distribution row ``r`` chose it from, in float32.

    Args:
        logits: ``[R, V]`` the verifier's logits of the rows that chose the tokens.
        tokens: ``[R]`` the chosen tokens.
        params: the request's sampling: ``log_softmax(logits / temperature)`` (within the top-k /
            top-p set when truncated) for sampling, ``log_softmax(logits)`` for greedy.
    """
    scores = logits.float() if params.greedy else target_scores(logits, params)
    index = torch.tensor(tokens, dtype=torch.long, device=scores.device).view(-1, 1)
    return scores.log_softmax(dim=-1).gather(-1, index).view(-1).tolist()


def gumbel_noise(seed: int, position: int, vocab: int) -> torch.Tensor:
    """``[vocab]`` standard Gumbel noise for one sequence position of one request."""
    generator = torch.Generator().manual_seed((seed * SEED_STRIDE + position) % 2**63)
    uniform = torch.rand(vocab, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    return -torch.log(-torch.log(uniform))


def sample_targets(probs: torch.Tensor, positions: list[int], seed: int) -> list[int]:
    """The verifier's sampled token at every row.

    Args:
        probs: ``[R, V]`` target probabilities.
        positions: ``[R]`` sequence position of the token each row predicts.
        seed: the request's seed.
    """
    noise = {pos: gumbel_noise(seed, pos, probs.shape[-1]) for pos in set(positions)}
    log_probs = probs.double().log()  # log 0 = -inf: a token outside top-k/top-p never wins
    return [int((log_probs[r] + noise[pos]).argmax()) for r, pos in enumerate(positions)]


def accept_sampling(
    tree: DraftTree, probs: torch.Tensor, first_position: int, seed: int
) -> tuple[list[int], int]:
    """Sampling acceptance (see the module docstring).

    Args:
        tree: the proposal.
        probs: ``[T + 1, V]`` target probabilities, rows as in :func:`accept_matching`.
        first_position: position of the token row 0 predicts (the sequence's committed length).
        seed: the request's seed.
    """
    positions = [first_position] + [first_position + int(d) for d in tree.depths()]
    return accept_matching(tree, sample_targets(probs, positions, seed))

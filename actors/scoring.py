"""Teacher-forced scoring: log-probabilities of given completions under a model's current weights.

For an RL reference model, a DPO reference, or checking the log-probs a rollout returned. The
forward is the model's own (transformers' layers, SDPA with a padding mask), not the verifier's
KV cache, so it touches no running request's state; the LM head runs only at the positions that
predict a completion token.
"""

from __future__ import annotations

import torch
from torch import nn


def score_completions(
    model: nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    temperature: float = 1.0,
    max_tokens: int = 4096,
    head_rows: int = 1024,
) -> list[list[float]]:
    """``log_softmax(logits / temperature)`` of every completion token given its prompt and the
    completion tokens before it, in float32.

    Args:
        model: a ``*ForCausalLM`` (``.model`` backbone, ``.lm_head``).
        prompts: token ids, none empty.
        completions: token ids, one list per prompt (may be empty).
        temperature: as in sampling; 0 scores ``log_softmax(logits)``, the convention of greedy
            requests' log-probs (:attr:`~actors.messages.SamplingParams.logprobs`).
        max_tokens: padded tokens per forward: sequences of similar length are batched up to it.
        head_rows: LM-head rows computed at once (bounds the ``[rows, V]`` logits in memory).

    Returns:
        One list per completion, ``len(completions[i])`` floats.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    vocab = model.get_input_embeddings().num_embeddings
    for index, (prompt, completion) in enumerate(zip(prompts, completions)):
        if not prompt:
            raise ValueError(f"prompt {index} is empty")
        if any(not 0 <= t < vocab for t in (*prompt, *completion)):
            raise ValueError(f"prompt or completion {index} has a token id outside [0, {vocab})")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    order = [i for i in order if completions[i]]
    scores: list[list[float]] = [[] for _ in prompts]
    group: list[int] = []
    for index in order:  # ascending lengths: the newest is the group's longest
        longest = len(prompts[index]) + len(completions[index])
        if group and (len(group) + 1) * longest > max_tokens:
            _score_group(model, prompts, completions, group, temperature, head_rows, scores)
            group = []
        group.append(index)
    if group:
        _score_group(model, prompts, completions, group, temperature, head_rows, scores)
    return scores


@torch.inference_mode()
def _score_group(model, prompts, completions, group, temperature, head_rows, scores) -> None:
    """One right-padded forward over ``group``; fills ``scores[i]`` for each of its indices."""
    device = next(model.parameters()).device
    sequences = [prompts[i] + completions[i] for i in group]
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(group), width, dtype=torch.long)
    mask = torch.zeros(len(group), width, dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (index, sequence) in enumerate(zip(group, sequences)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        start = len(prompts[index]) - 1  # the position whose logits predict the first completion token
        rows += [row] * len(completions[index])
        cols += range(start, start + len(completions[index]))
        targets += completions[index]
    hidden = model.model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
    ).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # [n, H]
    target = torch.tensor(targets, device=device)
    values = []
    for start in range(0, len(targets), head_rows):
        logits = model.lm_head(picked[start : start + head_rows]).float()
        if temperature > 0:
            logits = logits / temperature
        chosen = target[start : start + head_rows].view(-1, 1)
        values += logits.log_softmax(dim=-1).gather(-1, chosen).view(-1).tolist()
    offset = 0
    for index in group:
        count = len(completions[index])
        scores[index] = values[offset : offset + count]
        offset += count

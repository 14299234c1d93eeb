"""Samples → padded tensors for the trainer's forward: prompt + completion per row, and the
completion-aligned positions, targets, masks and engine log-probs.

Masks come from lengths, never from the pad id: SmolLM2's pad token is its EOS, and the EOS that
ended a completion is an action the policy took.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.trainers.rl.rollout import Sample


@dataclass
class PolicyBatch:
    """One micro-batch.

    Attributes:
        input_ids: ``[B, L]`` prompt + completion, right-padded with 0.
        attention_mask: ``[B, L]``.
        positions: ``[B, T]`` the index in ``input_ids`` of the logits that predict completion
            token ``t`` (``prompt_len - 1 + t``; 0 past the end).
        targets: ``[B, T]`` completion tokens (0 past the end).
        mask: ``[B, T]`` bool, the completion's tokens.
        engine_logp: ``[B, T]`` the engine's log-probs of the targets.
        advantages: ``[B]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    engine_logp: torch.Tensor
    advantages: torch.Tensor

    def to(self, device: torch.device) -> PolicyBatch:
        return PolicyBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(samples: list[Sample], advantages: list[float]) -> PolicyBatch:
    """Pad ``samples`` into one :class:`PolicyBatch` (every completion non-empty)."""
    width = max(len(s.prompt_ids) + len(s.token_ids) for s in samples)
    steps = max(len(s.token_ids) for s in samples)
    rows = len(samples)
    input_ids = torch.zeros(rows, width, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    positions = torch.zeros(rows, steps, dtype=torch.long)
    targets = torch.zeros(rows, steps, dtype=torch.long)
    mask = torch.zeros(rows, steps, dtype=torch.bool)
    engine_logp = torch.zeros(rows, steps)
    for i, sample in enumerate(samples):
        prompt, completion = len(sample.prompt_ids), len(sample.token_ids)
        if completion == 0:
            raise ValueError(f"problem {sample.problem.index}: an empty completion has no action to train")
        input_ids[i, : prompt + completion] = torch.tensor(sample.prompt_ids + sample.token_ids)
        attention[i, : prompt + completion] = 1
        positions[i, :completion] = torch.arange(prompt - 1, prompt - 1 + completion)
        targets[i, :completion] = torch.tensor(sample.token_ids)
        mask[i, :completion] = True
        engine_logp[i, :completion] = torch.tensor(sample.logprobs)
    scores = torch.tensor(advantages, dtype=torch.float32)
    return PolicyBatch(input_ids, attention, positions, targets, mask, engine_logp, scores)


def micro_batches(samples: list[Sample], advantages: list[float], size: int) -> list[PolicyBatch]:
    """``samples`` in micro-batches of ``size`` (longest first, so padding stays small)."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].prompt_ids) - len(samples[i].token_ids))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [collate([samples[i] for i in chunk], [advantages[i] for i in chunk]) for chunk in chunks]

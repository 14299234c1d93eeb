"""Pairs → padded tensors for one forward: the chosen completions' rows, then the rejected ones'.

The layout is the RL trainer's (:class:`actors.trainers.rl.batch.PolicyBatch`): prompt +
completion per row, right-padded, with the completion-aligned positions, targets and a mask
built from lengths (never from the pad id: SmolLM2's pad is its EOS, and an EOS that ended a
completion is scored), so the RL policy's forward (``PolicyObjective``) runs it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.trainers.preference.pairs import Pair


@dataclass
class PairBatch:
    """One micro-batch of ``B`` pairs as ``2B`` rows (``[:B]`` chosen, ``[B:]`` rejected).

    Attributes:
        input_ids: ``[2B, L]`` prompt + completion, right-padded with 0.
        attention_mask: ``[2B, L]``.
        positions: ``[2B, T]`` the index in ``input_ids`` of the logits that predict completion
            token ``t`` (0 past the end).
        targets: ``[2B, T]`` completion tokens (0 past the end).
        mask: ``[2B, T]`` bool, the completion's tokens.
        ref_chosen: ``[B]`` the reference's summed log-probs of the chosen (0 when unscored).
        ref_rejected: ``[B]`` the same for the rejected.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    @property
    def pairs(self) -> int:
        return self.ref_chosen.shape[0]

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate_pairs(pairs: list[Pair]) -> PairBatch:
    """Pad ``pairs`` into one :class:`PairBatch` (every completion non-empty)."""
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    steps = max(len(completion) for _, completion in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), steps, dtype=torch.long)
    targets = torch.zeros(len(rows), steps, dtype=torch.long)
    mask = torch.zeros(len(rows), steps, dtype=torch.bool)
    for i, (prompt, completion) in enumerate(rows):
        if not completion:
            raise ValueError(f"pair {pairs[i % len(pairs)].source}: an empty completion has nothing to score")
        length = len(prompt) + len(completion)
        input_ids[i, :length] = torch.tensor(prompt + completion)
        attention[i, :length] = 1
        positions[i, : len(completion)] = torch.arange(len(prompt) - 1, length - 1)
        targets[i, : len(completion)] = torch.tensor(completion)
        mask[i, : len(completion)] = True
    ref_chosen = torch.tensor([p.ref_chosen_logp or 0.0 for p in pairs], dtype=torch.float32)
    ref_rejected = torch.tensor([p.ref_rejected_logp or 0.0 for p in pairs], dtype=torch.float32)
    return PairBatch(input_ids, attention, positions, targets, mask, ref_chosen, ref_rejected)


def micro_batches(pairs: list[Pair], size: int) -> list[PairBatch]:
    """``pairs`` in micro-batches of ``size`` pairs (longest first, so padding stays small)."""

    def length(p: Pair) -> int:
        return len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))

    order = sorted(pairs, key=lambda p: -length(p))
    return [collate_pairs(order[i : i + size]) for i in range(0, len(order), size)]

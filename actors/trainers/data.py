"""Training rows of distillation: reading them, ordering them by step, padding them into batches.

A row is one prompt + response with the verifier's top-k at each response position (see
``actors/trainers/teacher.py``). The order of rows depends only on the seed and the step, so a run
resumed from a checkpoint at step N sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

ROW_COLUMNS = ["id", "input_ids", "start", "topk_ids", "topk_probs", "source", "split"]


@dataclass
class TokenBatch:
    """Padded rows.

    Attributes:
        input_ids: ``[B, L]`` int64 prompt + response tokens, right-padded with 0.
        mask: ``[B, L]`` bool, positions that carry a teacher distribution (of their next token).
        topk_ids: ``[B, L, k]`` int64 the teacher's top-k next tokens (0 where ``mask`` is off).
        topk_probs: ``[B, L, k]`` float32 their probabilities.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    topk_ids: torch.Tensor
    topk_probs: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(
            *(t.to(device) for t in (self.input_ids, self.mask, self.topk_ids, self.topk_probs))
        )


def read_rows(fs: pafs.FileSystem, path: str) -> list[dict]:
    """Every row of the Parquet files under ``path`` (a folder, local or in an object store),
    sorted by id so that every worker sees the same order."""
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=ROW_COLUMNS)
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def collate(rows: list[dict], max_len: int = 0) -> TokenBatch:
    """Pad ``rows`` into a :class:`TokenBatch`; ``max_len > 0`` cuts sequences to that many tokens."""
    lengths = [len(r["input_ids"]) if not max_len else min(len(r["input_ids"]), max_len) for r in rows]
    width = max(lengths)
    k = len(rows[0]["topk_ids"][0])
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    topk_ids = torch.zeros(len(rows), width, k, dtype=torch.long)
    topk_probs = torch.zeros(len(rows), width, k, dtype=torch.float32)
    for b, (row, length) in enumerate(zip(rows, lengths)):
        input_ids[b, :length] = torch.tensor(row["input_ids"][:length])
        start = row["start"]
        stop = min(start + len(row["topk_ids"]), length - 1)  # the last kept token needs a successor
        if stop > start:
            mask[b, start:stop] = True
            topk_ids[b, start:stop] = torch.tensor(row["topk_ids"][: stop - start])
            topk_probs[b, start:stop] = torch.tensor(row["topk_probs"][: stop - start])
    return TokenBatch(input_ids, mask, topk_ids, topk_probs)


def step_rows(
    num_rows: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1
) -> list[int]:
    """Row indices of ``rank``'s share of the global batch of ``step`` (counted from 0).

    The rows are a stream of permutations, one per epoch, seeded by ``seed`` and the epoch, cut into
    global batches of ``batch_size``; worker ``rank`` of ``world`` takes every ``world``-th row.
    """
    if num_rows <= 0:
        raise ValueError("no training rows")
    picked, first = [], step * batch_size
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, num_rows)
        picked.append(epoch_order(num_rows, seed, epoch)[offset])
    return picked[rank::world]


@functools.lru_cache(maxsize=4)
def epoch_order(num_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The row order of one epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_rows, generator=generator).tolist())


def chain_steps(matches: list[bool], depth: int) -> int:
    """Verifier steps that greedy speculative decoding with a ``depth``-token chain drafter needs
    to emit a response, when the drafter's token at position ``i`` is right exactly where
    ``matches[i]`` is (each step accepts the drafts up to the first wrong one, then adds the
    verifier's own token).

    Args:
        matches: ``[R]`` the student's argmax equals the teacher's, per response position.
        depth: drafted tokens per step.
    """
    steps, position = 0, 0
    while position < len(matches):
        accepted = 0
        while accepted < depth and position + accepted < len(matches) - 1 and matches[position + accepted]:
            accepted += 1
        position += accepted + 1
        steps += 1
    return steps

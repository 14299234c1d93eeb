"""Tree attention: a token tree's queries over a KV cache of prefix + tree.

Layout shared by every implementation (padded batch):

- ``q: [B, Hq, Tq, D]`` queries of the *last* ``q_lens[b]`` tree nodes of sequence ``b``
  (rows beyond ``q_lens[b]`` are padding and come out as zeros).
- ``k, v: [B, Hkv, S, D]`` the cache: ``prefix_lens[b]`` committed tokens, always visible,
  then ``tree_lens[b]`` tree nodes in BFS order. ``Hq`` is a multiple of ``Hkv`` (GQA).
- ``tree_mask: [B, Tq, W]`` int32, ``W = ceil(max tree_len / 32)``: bit ``j`` of row ``i`` set
  when tree node ``j`` is an ancestor of (or is) query row ``i``. Built from parent pointers by
  :func:`ancestor_bits`; the prefix is never masked, so it takes no bits.

A verifier uses ``q_lens == tree_lens`` (it queries every node of the step); a drafter growing
a tree level by level queries only the newest level with ``q_lens < tree_lens``.
"""

from __future__ import annotations

import math

import torch

BITS = 32


def ancestor_bits(parents: torch.Tensor) -> torch.Tensor:
    """Bit-packed ancestor-or-self mask of a batch of trees.

    Args:
        parents: ``[B, T]`` int, BFS order: ``parents[b, i] < i``; ``-1`` marks a root (a child
            of the prefix). Padding rows may hold any value ``< i``.

    Returns:
        ``[B, T, ceil(T / 32)]`` int32 bitmask.
    """
    batch, size = parents.shape
    dense = torch.zeros(batch, size, size, dtype=torch.bool)
    dense[:, torch.arange(size), torch.arange(size)] = True
    rows = torch.arange(batch)
    for i in range(size):  # BFS order: a parent's row is complete before its children read it
        parent = parents[:, i]
        has_parent = parent >= 0
        if has_parent.any():
            dense[rows[has_parent], i] |= dense[rows[has_parent], parent[has_parent]]
    return pack_bits(dense)


def pack_bits(dense: torch.Tensor) -> torch.Tensor:
    """``[..., T]`` bool → ``[..., ceil(T / 32)]`` int32, bit ``j % 32`` of word ``j // 32``."""
    size = dense.shape[-1]
    words = max(1, math.ceil(size / BITS))
    padded = torch.zeros(*dense.shape[:-1], words * BITS, dtype=torch.int64)
    padded[..., :size] = dense.to(torch.int64)
    weights = torch.bitwise_left_shift(torch.ones(BITS, dtype=torch.int64), torch.arange(BITS))
    packed = (padded.view(*dense.shape[:-1], words, BITS) * weights).sum(-1)
    # Reinterpret the low 32 bits as signed int32 (bit 31 set → negative value).
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_bits(packed: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[..., W]`` int32 → ``[..., size]`` bool."""
    shifts = torch.arange(BITS, dtype=torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :size].bool()


def dense_tree_mask(
    prefix_lens: torch.Tensor,
    tree_lens: torch.Tensor,
    q_lens: torch.Tensor,
    tree_mask: torch.Tensor,
    kv_len: int,
) -> torch.Tensor:
    """Boolean attention mask ``[B, Tq, kv_len]`` (True = attend) equivalent to the tree layout.

    Padding query rows see only cache position 0 so that softmax stays finite.
    """
    batch, q_rows, _ = tree_mask.shape
    device = tree_mask.device
    pos = torch.arange(kv_len, device=device)
    prefix = prefix_lens.to(device).view(batch, 1, 1)
    tree_len = tree_lens.to(device).view(batch, 1, 1)
    width = tree_mask.shape[-1] * BITS
    bits = unpack_bits(tree_mask, width)  # bit j ↔ cache position prefix + j
    tree_pos = (pos.view(1, 1, kv_len) - prefix).clamp(min=0, max=width - 1)
    in_tree = (pos >= prefix) & (pos < prefix + tree_len)
    mask = pos.view(1, 1, kv_len) < prefix
    mask = mask | (in_tree & torch.gather(bits, 2, tree_pos.expand(batch, q_rows, kv_len)))
    padding = torch.arange(q_rows, device=device).view(1, q_rows) >= q_lens.to(device).view(batch, 1)
    mask[padding] = pos == 0
    return mask


def tree_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_lens: torch.Tensor,
    q_lens: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float | None = None,
    dense_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch tree attention (the oracle, and the CPU path).

    Args:
        q: ``[B, Hq, Tq, D]``.
        k, v: ``[B, Hkv, S, D]`` with ``S >= max(prefix_lens + tree_lens)``.
        prefix_lens, tree_lens, q_lens: ``[B]`` int.
        tree_mask: ``[B, Tq, W]`` int32 from :func:`ancestor_bits` (rows of the queried nodes).
        scale: softmax scale, ``1/sqrt(D)`` by default.
        dense_mask: ``[B, Tq, kv_len]`` from :func:`dense_tree_mask`, when the caller already
            built it (a model reuses one mask for every layer).

    Returns:
        ``[B, Hq, Tq, D]`` in ``q``'s dtype; padding rows are zero.
    """
    batch, q_heads, q_rows, _ = q.shape
    kv_len = int((prefix_lens + tree_lens).max())
    if dense_mask is None:
        dense_mask = dense_tree_mask(prefix_lens, tree_lens, q_lens, tree_mask, kv_len)
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        k[:, :, :kv_len],
        v[:, :, :kv_len],
        attn_mask=dense_mask[:, None, :, :kv_len],
        scale=scale,
        enable_gqa=q_heads != k.shape[1],
    )
    padding = torch.arange(q_rows, device=q.device).view(1, q_rows) >= q_lens.to(q.device).view(batch, 1)
    return out.masked_fill(padding[:, None, :, None], 0.0)


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_lens: torch.Tensor,
    q_lens: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
    dense_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tree attention through the chosen backend (``auto``: Triton on CUDA, reference elsewhere).

    Same arguments and result as :func:`tree_attention_ref`.
    """
    if backend not in ("auto", "reference", "triton"):
        raise ValueError(f"attention backend must be auto, reference or triton, got {backend!r}")
    # TODO(kernel issue): dispatch to the Triton kernel.
    return tree_attention_ref(q, k, v, prefix_lens, tree_lens, q_lens, tree_mask, scale, dense_mask)

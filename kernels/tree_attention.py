"""Tree attention: a token tree's queries over a KV cache of prefix + tree.

Layout shared by every implementation (padded batch):

- ``q: [B, Hq, Tq, D]`` queries of the *last* ``q_lens[b]`` tree nodes of sequence ``b``
  (rows beyond ``q_lens[b]`` are padding and come out as zeros).
- ``k, v: [B, Hkv, S, D]`` the cache: ``prefix_lens[b]`` committed tokens, always visible,
  then ``tree_lens[b]`` tree nodes in BFS order. ``Hq`` is a multiple of ``Hkv`` (GQA).
- ``tree_mask: [B, Tq, W]`` int32, ``W = ceil(max tree_len / 32)``: bit ``j`` of row ``i`` set
  when tree node ``j`` is an ancestor of (or is) query row ``i``. Built from parent pointers by
  :func:`ancestor_bits`; the prefix is never masked, so it takes no bits.

The lengths and the mask travel together as a :class:`TreeMetadata`: they describe one forward's
trees and are the same for every layer, whose calls differ only in ``q``, ``k`` and ``v``.

A verifier uses ``q_lens == tree_lens`` (it queries every node of the step); a drafter growing
a tree level by level queries only the newest level with ``q_lens < tree_lens``.
"""

from __future__ import annotations

import math
import os
import threading

import torch

from kernels.tree_metadata import TreeMetadata

BITS = 32


def ancestor_bits(parents: torch.Tensor) -> torch.Tensor:
    """Bit-packed ancestor-or-self mask of a batch of trees (the validated mask builder).

    Args:
        parents: ``[B, T]`` int, BFS order: ``-1 <= parents[b, i] < i``; ``-1`` marks a root (a
            child of the prefix). Rows past a tree's size are padding and may hold any valid value.

    Returns:
        ``[B, T, ceil(T / 32)]`` int32 bitmask on ``parents``' device.

    Raises:
        ValueError: ``parents`` is not a 2-D integer tensor, or a parent index does not point to an
            earlier node (``parents[b, i] >= i`` or ``< -1``).
    """
    if parents.dim() != 2 or parents.dtype.is_floating_point or parents.dtype == torch.bool:
        raise ValueError(
            f"parents must be a [B, T] integer tensor, got {parents.dtype} {tuple(parents.shape)}"
        )
    batch, size = parents.shape
    node = torch.arange(size, device=parents.device)
    bad = (parents >= node) | (parents < -1)
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"parents[{b}, {i}] = {int(parents[b, i])} does not point to an earlier node "
            f"(BFS order needs -1 <= parent < {i})"
        )
    dense = torch.zeros(batch, size, size, dtype=torch.bool, device=parents.device)
    dense[:, node, node] = True
    rows = torch.arange(batch, device=parents.device)
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
    padded = torch.zeros(*dense.shape[:-1], words * BITS, dtype=torch.int64, device=dense.device)
    padded[..., :size] = dense.to(torch.int64)
    shifts = torch.arange(BITS, device=dense.device)
    weights = torch.bitwise_left_shift(torch.ones(BITS, dtype=torch.int64, device=dense.device), shifts)
    packed = (padded.view(*dense.shape[:-1], words, BITS) * weights).sum(-1)
    # Reinterpret the low 32 bits as signed int32 (bit 31 set → negative value).
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_bits(packed: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[..., W]`` int32 → ``[..., size]`` bool."""
    shifts = torch.arange(BITS, dtype=torch.int64, device=packed.device)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :size].bool()


def dense_tree_mask(meta: TreeMetadata, kv_len: int) -> torch.Tensor:
    """Boolean attention mask ``[B, Tq, kv_len]`` (True = attend) equivalent to the tree layout.

    Padding query rows see only cache position 0 so that softmax stays finite.
    """
    tree_mask = meta.tree_mask
    batch, q_rows, _ = tree_mask.shape
    device = tree_mask.device
    pos = torch.arange(kv_len, device=device)
    prefix = meta.prefix_lens.to(device).view(batch, 1, 1)
    tree_len = meta.tree_lens.to(device).view(batch, 1, 1)
    width = tree_mask.shape[-1] * BITS
    bits = unpack_bits(tree_mask, width)  # bit j ↔ cache position prefix + j
    tree_pos = (pos.view(1, 1, kv_len) - prefix).clamp(min=0, max=width - 1)
    in_tree = (pos >= prefix) & (pos < prefix + tree_len)
    mask = pos.view(1, 1, kv_len) < prefix
    mask = mask | (in_tree & torch.gather(bits, 2, tree_pos.expand(batch, q_rows, kv_len)))
    padding = torch.arange(q_rows, device=device).view(1, q_rows) >= meta.q_lens.to(device).view(batch, 1)
    mask[padding] = pos == 0
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend) as SDPA's additive one: 0 where True, -inf elsewhere. SDPA
    gives the same result for both and takes the additive one faster on a CPU (8 µs of 96 per
    call, SmolLM2's shapes), so a caller reusing one mask for every layer converts it once."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def tree_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: TreeMetadata,
    scale: float | None = None,
    dense_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch tree attention (the oracle, and the CPU path).

    Args:
        q: ``[B, Hq, Tq, D]``.
        k, v: ``[B, Hkv, S, D]`` with ``S >= max(prefix_lens + tree_lens)``.
        meta: the lengths and ancestor mask of the trees.
        scale: softmax scale, ``1/sqrt(D)`` by default.
        dense_mask: ``[B, Tq, kv_len]`` from :func:`dense_tree_mask` (or made additive by
            :func:`additive_mask`), when the caller already built it (a model reuses one mask
            for every layer).

    Returns:
        ``[B, Hq, Tq, D]`` in ``q``'s dtype; padding rows are zero.
    """
    batch, q_heads, q_rows, _ = q.shape
    kv_len = int((meta.prefix_lens + meta.tree_lens).max())
    if dense_mask is None:
        dense_mask = dense_tree_mask(meta, kv_len)
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        k[:, :, :kv_len],
        v[:, :, :kv_len],
        attn_mask=dense_mask[:, None, :, :kv_len],
        scale=scale,
        enable_gqa=q_heads != k.shape[1],
    )
    padding = torch.arange(q_rows, device=q.device).view(1, q_rows) >= meta.q_lens.to(q.device).view(batch, 1)
    return out.masked_fill(padding[:, None, :, None], 0.0) if padding.any() else out


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: TreeMetadata) -> None:
    """Reject malformed tree-attention inputs with a message that names the argument.

    Shapes, dtypes and devices are always checked. The length *values* are checked only when the
    length tensors live on the host, so a CUDA caller never pays a device sync.

    Raises:
        TypeError: a dtype other than fp32/fp16/bf16 for q/k/v (or a mix), non-integer lengths,
            a ``tree_mask`` that is not int32.
        ValueError: mismatched shapes or devices, ``Hq`` not a multiple of ``Hkv``, or lengths that
            do not fit (``q_lens > tree_lens``, ``prefix + tree > S``, ``tree_lens > 32 * W``...).
    """
    prefix_lens, tree_lens, q_lens, tree_mask = meta.prefix_lens, meta.tree_lens, meta.q_lens, meta.tree_mask
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, T, D], got shape {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, q_heads, q_rows, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q {tuple(q.shape)} in batch or head dim")
    kv_heads = k.shape[1]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of KV heads ({kv_heads})")
    for name, x in (("prefix_lens", prefix_lens), ("tree_lens", tree_lens), ("q_lens", q_lens)):
        if x.dim() != 1 or x.shape[0] != batch:
            raise ValueError(f"{name} must have shape [{batch}], got {tuple(x.shape)}")
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
        if x.device.type != "cpu" and x.device != q.device:
            raise ValueError(f"{name} is on {x.device}; it must be on the host or on q's device {q.device}")
    if tree_mask.dtype != torch.int32:
        raise TypeError(f"tree_mask must be int32 (from ancestor_bits), got {tree_mask.dtype}")
    if tree_mask.dim() != 3 or tree_mask.shape[:2] != (batch, q_rows):
        raise ValueError(f"tree_mask must have shape [{batch}, {q_rows}, W], got {tuple(tree_mask.shape)}")
    if tree_mask.device != q.device:
        raise ValueError(f"tree_mask is on {tree_mask.device} but q is on {q.device}")
    lens = (prefix_lens, tree_lens, q_lens)
    if any(x.device.type != "cpu" for x in lens) or batch == 0:
        return
    kv_len = prefix_lens + tree_lens
    checks = (
        ((prefix_lens < 0) | (q_lens < 0), "prefix_lens and q_lens must be >= 0"),
        (q_lens > tree_lens, "q_lens must not exceed tree_lens"),
        (q_lens > q_rows, f"q_lens must not exceed q's rows ({q_rows})"),
        (
            tree_lens > BITS * tree_mask.shape[2],
            f"tree_lens must fit tree_mask's {BITS * tree_mask.shape[2]} bits",
        ),
        (kv_len > k.shape[2], f"prefix_lens + tree_lens must fit the cache length S = {k.shape[2]}"),
    )
    for bad, message in checks:
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{message} (sequence {b}: prefix {int(prefix_lens[b])}, tree {int(tree_lens[b])}, "
                f"q {int(q_lens[b])})"
            )


_INTERPRETER_LOCK = threading.Lock()


def triton_available() -> bool:
    """Whether the Triton kernel module can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: TreeMetadata,
    scale: float | None = None,
    backend: str = "auto",
    dense_mask: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Tree attention through the chosen backend, after :func:`check_inputs` (``check=False``
    skips it for a caller that already checked the same metadata, e.g. every layer but the first).

    ``backend``: ``"auto"`` runs the Triton kernel when ``q`` is on CUDA and Triton imports, the
    reference otherwise; ``"triton"`` forces the kernel (on the CPU only under
    ``TRITON_INTERPRET=1``, which must be set before the kernel module is first imported);
    ``"reference"`` forces :func:`tree_attention_ref`. ``dense_mask`` is used by the reference only.

    Same arguments and result as :func:`tree_attention_ref`.

    Raises:
        ValueError: an unknown backend, or bad inputs (see :func:`check_inputs`).
        RuntimeError: ``backend="triton"`` where the kernel cannot run.
    """
    if backend not in ("auto", "reference", "triton"):
        raise ValueError(f"attention backend must be auto, reference or triton, got {backend!r}")
    if check:
        check_inputs(q, k, v, meta)
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "reference"
    if backend == "reference":
        return tree_attention_ref(q, k, v, meta, scale, dense_mask)
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='reference'")
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"backend='triton' on {q.device} needs a CUDA tensor, or TRITON_INTERPRET=1 set before the "
            "kernel is first imported (CPU interpreter, for tests); use backend='reference' on the CPU"
        )
    from kernels.tree_attention_triton import tree_attention_triton

    if q.is_cuda:
        return tree_attention_triton(q, k, v, meta, scale)
    with _INTERPRETER_LOCK:  # Triton's CPU interpreter patches global state: one launch at a time
        return tree_attention_triton(q, k, v, meta, scale)

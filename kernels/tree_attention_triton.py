"""Triton tree-attention kernel and its launcher (imported lazily: needs ``triton``).

Layout and semantics are those of :mod:`kernels.tree_attention`. Design:

- **GQA packing.** One program owns one (sequence, KV head) and a tile of ``BLOCK_M`` query rows
  taken from the ``group × Tq`` rows of that KV head's query heads (row ``r`` is tree query
  ``r // group`` of query head ``r % group``), so a KV tile is loaded once for the whole group.
  When ``group × Tq`` fits one tile, each prefix token is read once per KV head.
- **Two loops.** Whole prefix tiles run without any mask; only the tiles that touch the tree (or
  the end of the cache) test the bit-packed ancestor mask.
- **Split-KV.** With few (sequence, KV head) programs, the KV range is cut into chunks handled by
  separate programs (flash-decoding); each writes a normalised partial output and its log-sum-exp,
  and :func:`_combine_splits` merges them.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kernels.tree_metadata import TreeMetadata

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    start_n,
    prefix_len,
    tree_len,
    mask_rows,
    row_ok,
    qk_scale,
    offs_n,
    offs_d,
    HEAD_DIM: tl.constexpr,
    EVEN_D: tl.constexpr,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online-softmax update of one ``BLOCK_N`` KV tile; ``MASKED`` tiles apply the tree bits."""
    pos = start_n + offs_n
    k_ptrs = k_base + pos[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = v_base + pos[:, None] * stride_vn + offs_d[None, :]
    d_ok = offs_d < HEAD_DIM
    if MASKED:
        kv_ok = pos < prefix_len + tree_len
        k = tl.load(k_ptrs, mask=kv_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=kv_ok[:, None] & d_ok[None, :], other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    qk = tl.dot(q, k, input_precision=PRECISION)
    qk = qk * qk_scale
    if MASKED:
        node = pos - prefix_len  # tree node index of each key (negative: prefix)
        in_tree = (node >= 0) & (node < tree_len)
        word_idx = tl.where(in_tree, node, 0) // 32
        words = tl.load(
            mask_rows[:, None] + word_idx[None, :], mask=row_ok[:, None] & in_tree[None, :], other=0
        )
        bit = (words >> (tl.where(in_tree, node, 0) % 32)[None, :]) & 1
        visible = (pos < prefix_len)[None, :] | (bit != 0)
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _tree_attention_fwd(
    Q,
    K,
    V,
    Out,
    Mask,
    PrefixLens,
    TreeLens,
    QLens,
    PartialO,
    PartialLse,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_mb,
    stride_mt,
    num_kv_heads,
    q_rows,
    num_splits,
    tiles_per_split,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # grid: (m tiles, splits, B * Hkv); m tiles vary fastest so a KV head's tiles share L2.
    # PartialO / PartialLse: contiguous [B, Hq, Tq, splits, HEAD_DIM] / [B, Hq, Tq, splits] scratch.
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // num_kv_heads
    kv_head = pid_bh % num_kv_heads
    prefix_len = tl.load(PrefixLens + b)
    tree_len = tl.load(TreeLens + b)
    q_len = tl.load(QLens + b)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    t = offs_m // GROUP  # query row (tree query index)
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = t < q_len
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + head[:, None] * stride_qh + t[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    mask_rows = Mask + b * stride_mb + tl.where(row_ok, t, 0) * stride_mt

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked rows stay NaN-free
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    n_tiles = tl.cdiv(prefix_len + tree_len, BLOCK_N)
    lo = pid_s * tiles_per_split
    hi = tl.minimum(lo + tiles_per_split, n_tiles)
    hi = tl.where(pid_m * BLOCK_M < q_len * GROUP, hi, lo)  # an all-padding tile does no work
    mid = tl.minimum(tl.maximum(prefix_len // BLOCK_N, lo), hi)
    for tile in range(lo, mid):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, tile * BLOCK_N,
            prefix_len, tree_len, mask_rows, row_ok, qk_scale, offs_n, offs_d,
            HEAD_DIM, BLOCK_D == HEAD_DIM, False, PRECISION,
        )  # fmt: skip
    for tile in range(mid, hi):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, tile * BLOCK_N,
            prefix_len, tree_len, mask_rows, row_ok, qk_scale, offs_n, offs_d,
            HEAD_DIM, BLOCK_D == HEAD_DIM, True, PRECISION,
        )  # fmt: skip

    seen = row_ok & (l_i > 0.0)
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    out = tl.where(seen[:, None], out, 0.0)
    store_ok = (t < q_rows)[:, None] & d_ok[None, :]
    if SPLIT:
        part = ((b * num_kv_heads * GROUP + head) * q_rows + t) * num_splits + pid_s
        tl.store(PartialO + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=store_ok)
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(PartialLse + part, lse, mask=t < q_rows)
    else:
        o_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + t[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=store_ok)


@triton.jit
def _combine_splits(
    Out,
    PartialO,
    PartialLse,
    QLens,
    stride_ob,
    stride_oh,
    stride_ot,
    num_heads,
    q_rows,
    num_splits,
    total_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Merge the split partial outputs of ``ROWS`` consecutive (sequence, head, query) rows.

    ``PartialO`` / ``PartialLse`` are the forward's contiguous ``[B, Hq, Tq, splits, HEAD_DIM]`` /
    ``[B, Hq, Tq, splits]`` scratch, so a row's partials start at ``row * num_splits``.
    """
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < num_splits
    d_ok = offs_d < HEAD_DIM
    for i in tl.static_range(ROWS):
        # The last program may run past the end: it recomputes (and rewrites) the last row.
        row = tl.minimum(tl.program_id(0) * ROWS + i, total_rows - 1)
        t = row % q_rows
        head = (row // q_rows) % num_heads
        b = row // (q_rows * num_heads)
        q_len = tl.load(QLens + b)
        part = row * num_splits + offs_s
        lse = tl.load(PartialLse + part, mask=s_ok, other=float("-inf"))
        lse_max = tl.max(lse, 0)
        lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
        weight = tl.math.exp2(lse - lse_max)
        parts = tl.load(
            PartialO + part[:, None] * HEAD_DIM + offs_d[None, :],
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        total = tl.sum(weight, 0)
        out = tl.sum(parts * weight[:, None], 0) / tl.where(total > 0.0, total, 1.0)
        out = tl.where((t < q_len) & (total > 0.0), out, 0.0)
        o_ptrs = Out + b * stride_ob + head * stride_oh + t * stride_ot + offs_d
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=d_ok)


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: a few programs suffice to exercise the split path
    return torch.cuda.get_device_properties(device).multi_processor_count


def pick_tiles(
    q: torch.Tensor, group: int, block_n: int | None, block_m: int | None = None
) -> tuple[int, int, int, int, int]:
    """Tile shape for the launch: ``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages)``.

    ``BLOCK_M`` covers the whole ``group × Tq`` rows of a KV head up to 128, so the prefix is
    read once per KV head; 4 warps, BLOCK_N 64 and 3 stages measured best for the
    bandwidth-bound small tiles, 8 warps for 128-row tiles (H100, bf16, d=128).
    """
    rows = group * q.shape[2]
    if block_m is None:
        block_m = min(128, max(16, triton.next_power_of_2(rows)))
    block_d = max(16, triton.next_power_of_2(q.shape[3]))
    if block_n is None:
        block_n = 64 if block_d <= 128 else 32
        if q.dtype == torch.float32:
            block_n = 32
    num_warps = 8 if block_m >= 128 else 4
    num_stages = 3 if q.dtype != torch.float32 else 2
    return block_m, block_n, block_d, num_warps, num_stages


def pick_splits(programs: int, kv_tiles: int, block_n: int, sm_count: int) -> int:
    """How many chunks to cut the KV range into so the launch fills the device.

    Fills at most one wave (``programs × splits <= SMs``): on an H100, a second partial wave and
    the extra partial outputs cost more than they gain (measured: batch 8, prefix 16384, tree 8
    ran 245 µs with 5 splits, 194 µs with 2). Each chunk keeps at least 256 keys.

    Batch 1 (8 KV heads → 16 splits, one wave) was swept with ``python -m pipelines.bench.kernel_sweep``
    (H100, commit 44aa2bc): splits 8–128 × BLOCK_N 32/64/128 × 4/8 warps × 2–4 stages. Nothing
    beat the heuristic by more than noise at prefix 16384 (tree 8: 36.7 µs, 55% of HBM peak; tree
    32: 42.4 µs, 48%); more splits got slower even without the combine (tree 8, kernel alone:
    33.6 µs at 16 splits, 37.2 at 32, 44.2 at 64), so a CTA's fixed start/pipeline-fill cost, not
    SM count, bounds it. The combine launch costs 2.9 µs (tree 8) and 5.4 µs (tree 32): even free,
    tree 8 would reach 59%. 70% at batch 1 needs more bytes per SM-cycle from one CTA (TMA loads /
    warp specialisation), not a different split.
    """
    min_tiles = max(1, 256 // block_n)
    return max(1, min(sm_count // max(programs, 1), kv_tiles // min_tiles))


def tree_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: TreeMetadata,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launch the kernel on validated inputs (see :func:`kernels.tree_attention.check_inputs`).

    The keyword-only arguments override the tile heuristics (tests and the benchmark use them).

    Returns:
        ``[B, Hq, Tq, D]`` in ``q``'s dtype; padding rows are zero.
    """
    batch, q_heads, q_rows, head_dim = q.shape
    kv_heads, cache_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    device = q.device
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    tree_mask = meta.tree_mask.contiguous()
    prefix_lens, tree_lens = meta.prefix_lens, meta.tree_lens
    # Upper bound of the KV length without a device sync: exact when the lengths live on the host.
    if prefix_lens.device.type == "cpu" and tree_lens.device.type == "cpu":
        kv_max = int((prefix_lens + tree_lens).max()) if batch else 0
    else:
        kv_max = cache_len
    prefix_lens = prefix_lens.to(device=device, dtype=torch.int32, non_blocking=True)
    tree_lens = tree_lens.to(device=device, dtype=torch.int32, non_blocking=True)
    q_lens = meta.q_lens.to(device=device, dtype=torch.int32, non_blocking=True)
    out = torch.empty_like(q)
    if out.numel() == 0:
        return out

    block_m, block_n, block_d, warps, stages = pick_tiles(q, group, block_n, block_m)
    if block_m < 16 or block_n < 16:
        raise ValueError(f"block_m and block_n must be >= 16 (tl.dot), got {block_m} and {block_n}")
    warps = num_warps or warps
    stages = num_stages or stages
    m_tiles = triton.cdiv(group * q_rows, block_m)
    kv_tiles = max(1, triton.cdiv(kv_max, block_n))
    if num_splits is None:
        num_splits = pick_splits(batch * kv_heads * m_tiles, kv_tiles, block_n, _sm_count(device))
    num_splits = max(1, min(num_splits, kv_tiles))
    tiles_per_split = triton.cdiv(kv_tiles, num_splits)
    num_splits = triton.cdiv(kv_tiles, tiles_per_split)
    split = num_splits > 1
    if split:
        partial_o = torch.empty(
            batch, q_heads, q_rows, num_splits, head_dim, device=device, dtype=torch.float32
        )
        partial_lse = torch.empty(batch, q_heads, q_rows, num_splits, device=device, dtype=torch.float32)
    else:
        partial_o = partial_lse = out  # unused
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays exact, as the reference
    grid = (m_tiles, num_splits, batch * kv_heads)
    _tree_attention_fwd[grid](
        q, k, v, out, tree_mask, prefix_lens, tree_lens, q_lens, partial_o, partial_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        tree_mask.stride(0), tree_mask.stride(1),
        kv_heads, q_rows, num_splits, tiles_per_split,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        SPLIT=split, PRECISION=precision, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if split:
        total_rows = batch * q_heads * q_rows
        # One row per program measured best on an H100: 8 rows looped per program made batch 1,
        # prefix 16384, tree 8 go from 36 to 48 µs (serial load latency) and fixed nothing else.
        rows_per_program = 1
        _combine_splits[(triton.cdiv(total_rows, rows_per_program),)](
            out, partial_o, partial_lse, q_lens,
            out.stride(0), out.stride(1), out.stride(2),
            q_heads, q_rows, num_splits, total_rows,
            HEAD_DIM=head_dim, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
            ROWS=rows_per_program, num_warps=4 if block_d >= 128 else 2,
        )  # fmt: skip
    return out

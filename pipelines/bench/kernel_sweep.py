"""Batch-1 split-path sweep (H100 only): splits × BLOCK_N × warps × stages, and the combine's share.

    python -m pipelines.bench.kernel_sweep      # writes $OUT/sweep.json (or /tmp), prints each config

Times are medians of CUDA-graph replays as in :mod:`pipelines.bench.kernel`; "nocomb" rows skip the combine
launch (partial outputs only) to isolate its cost. Results are summarised in
:func:`kernels.tree_attention_triton.pick_splits`.
"""

import itertools
import json
import math
import os
import time

import torch

from kernels import tree_attention_triton as tat
from pipelines.bench.kernel import HEAD_DIM, KV_HEADS, L2_ROTATE_BYTES, make_inputs, time_graph

real_combine = tat._combine_splits


class _Nop:
    def __getitem__(self, g):
        return lambda *a, **k: None


shapes: dict = {}


def run(shape, cfg, no_combine=False):
    batch, prefix, tree = shape
    x = shapes[shape]
    q = x["q"]

    def fn():
        for k, v in x["kvs"]:
            tat.tree_attention_triton(q, k, v, x["meta"], **cfg)

    tat._combine_splits = _Nop() if no_combine else real_combine
    try:
        return time_graph(fn, len(x["kvs"]), min_ms=15.0) * 1e3
    finally:
        tat._combine_splits = real_combine


def main() -> None:
    global shapes
    gen = torch.Generator().manual_seed(0)
    shapes = {}
    for s in [(1, 16384, 8), (1, 16384, 32), (1, 4096, 8), (1, 4096, 32), (1, 16384, 64)]:
        b, p, t = s
        kvb = 2 * b * KV_HEADS * (p + t) * HEAD_DIM * 2
        shapes[s] = make_inputs(b, p, t, max(1, min(8, math.ceil(L2_ROTATE_BYTES / kvb))), gen)
        shapes[s]["bytes"] = kvb + 2 * shapes[s]["q"].numel() * 2
    res = []

    def rec(shape, cfg, us, nc=False):
        bw = shapes[shape]["bytes"] / (us * 1e-6) / 3.35e12
        res.append(dict(shape=shape, cfg=cfg, us=us, frac=bw, no_combine=nc))
        print(shape, cfg, "nocomb" if nc else "", f"{us:.1f}us {bw * 100:.0f}%", flush=True)

    t0 = time.time()
    for shape in shapes:
        rec(shape, {}, run(shape, {}))
        rec(shape, {}, run(shape, {}, True), True)
    tiles = [
        (64, 4, 3),
        (64, 4, 4),
        (64, 8, 3),
        (128, 4, 3),
        (128, 8, 3),
        (128, 8, 2),
        (64, 4, 2),
        (32, 4, 4),
    ]
    splits_all = [8, 16, 24, 32, 48, 64, 96, 128]
    for shape in [(1, 16384, 8), (1, 16384, 32), (1, 4096, 8), (1, 4096, 32)]:
        splits = splits_all if shape[1] == 16384 else [4, 8, 16, 24, 32, 48]
        for (bn, w, st), s in itertools.product(tiles, splits):
            cfg = dict(block_n=bn, num_warps=w, num_stages=st, num_splits=s)
            try:
                rec(shape, cfg, run(shape, cfg))
            except Exception as e:
                print(shape, cfg, "ERR", type(e).__name__, str(e)[:100], flush=True)
        if time.time() - t0 > 200:
            break
    # combine-free timings for a few, and block_m 64 for tree 32
    for shape in [(1, 16384, 8), (1, 16384, 32)]:
        for s in [16, 32, 64]:
            cfg = dict(block_n=64, num_splits=s)
            rec(shape, cfg, run(shape, cfg, True), True)
    for s in [16, 32, 64]:
        for bn, w in [(64, 4), (128, 4), (64, 8)]:
            cfg = dict(block_m=64, block_n=bn, num_warps=w, num_splits=s)
            try:
                rec((1, 16384, 32), cfg, run((1, 16384, 32), cfg))
            except Exception:
                print("ERR", cfg, flush=True)
    for s in [16, 32, 64]:
        for bn, w in [(64, 8), (128, 8), (64, 4)]:
            cfg = dict(block_n=bn, num_warps=w, num_splits=s)
            try:
                rec((1, 16384, 64), cfg, run((1, 16384, 64), cfg))
            except Exception:
                print("ERR", cfg, flush=True)
    out = os.environ.get("OUT", "/tmp")
    with open(f"{out}/sweep.json", "w") as f:
        json.dump([dict(r, shape=list(r["shape"])) for r in res], f)
    best = {}
    for r in res:
        if r["no_combine"]:
            continue
        k = tuple(r["shape"])
        if k not in best or r["us"] < best[k]["us"]:
            best[k] = r
    for k, r in best.items():
        print("BEST", k, r["cfg"], f"{r['us']:.1f}us {r['frac'] * 100:.0f}%")
    print("elapsed", time.time() - t0)


if __name__ == "__main__":
    main()

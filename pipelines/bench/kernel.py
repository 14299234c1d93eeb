"""Tree-attention kernel benchmark: the Triton kernel against PyTorch SDPA with a dense mask.

Measure on a CUDA device (writes JSON)::

    python -m pipelines.bench.kernel --json results/kernel_bench.json

Render a measured JSON into ``docs/benchmarks.md`` (between the kernel-bench markers) and
``docs/kernel_tree_attention.png``::

    python -m pipelines.bench.kernel --render results/kernel_bench.json

Timing: each function is captured in a CUDA graph (no host overhead), rotating over enough
copies of K/V that they do not fit in L2, and the median of the graph replays is reported.
Bytes count each input read once and the output written once; FLOPs count ``4·B·Hq·T·(P+T)·D``
(QKᵀ and PV over every cached key, masked or not).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable

import torch

from kernels.tree_attention import TreeMetadata, ancestor_bits, dense_tree_mask, tree_attention

# Datasheet peaks (dense bf16 tensor-core FLOP/s, HBM bytes/s) by device-name substring.
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
L2_ROTATE_BYTES = 256 * 2**20


def random_tree(size: int, gen: torch.Generator) -> torch.Tensor:
    """BFS-ordered parents of a random tree: node i's parent drawn from the nodes before it."""
    parents = [-1] + [int(torch.randint(-1, i, (1,), generator=gen)) for i in range(1, size)]
    return torch.tensor([parents])


def time_graph(fn: Callable[[], object], calls: int, min_ms: float = 200.0) -> float:
    """Median milliseconds per call, from CUDA-graph replays of ``fn`` (which makes ``calls`` calls)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm up: compile, autotune-free, allocate
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    reps = max(5, min(200, int(min_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times)


def make_inputs(batch: int, prefix: int, tree: int, copies: int, gen: torch.Generator) -> dict:
    device, dtype = "cuda", torch.bfloat16
    parents = random_tree(tree, gen).expand(batch, tree)
    kv_len = prefix + tree
    # prefix_lens, tree_lens, q_lens: every sequence queries its whole tree
    lens = [torch.full((batch,), n, dtype=torch.int32, device=device) for n in (prefix, tree, tree)]
    meta = TreeMetadata(*lens, tree_mask=ancestor_bits(parents).to(device))
    kvs = [
        tuple(torch.randn(batch, KV_HEADS, kv_len, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
        for _ in range(copies)
    ]
    return dict(
        q=torch.randn(batch, Q_HEADS, tree, HEAD_DIM, device=device, dtype=dtype),
        kvs=kvs,
        meta=meta,
        dense=dense_tree_mask(meta, kv_len)[:, None],
    )


def bench_shape(batch: int, prefix: int, tree: int, peaks: tuple[float, float], sdpa: bool = True) -> dict:
    gen = torch.Generator().manual_seed(batch * 100003 + prefix * 101 + tree)
    kv_len = prefix + tree
    kv_bytes = 2 * batch * KV_HEADS * kv_len * HEAD_DIM * 2
    copies = max(1, min(8, math.ceil(L2_ROTATE_BYTES / kv_bytes)))
    x = make_inputs(batch, prefix, tree, copies, gen)
    q = x["q"]

    def run_kernel():
        for k, v in x["kvs"]:
            tree_attention(q, k, v, x["meta"], backend="triton")

    q_bytes = q.numel() * 2
    moved = kv_bytes + 2 * q_bytes + x["meta"].tree_mask.numel() * 4
    flops = 4 * batch * Q_HEADS * tree * kv_len * HEAD_DIM
    ms = time_graph(run_kernel, copies)
    row = dict(batch=batch, prefix=prefix, tree=tree, kernel_us=ms * 1e3, bytes=moved, flops=flops)
    row.update(
        gbps=moved / ms / 1e6,
        hbm_frac=moved / (ms * 1e-3) / peaks[1],
        tflops=flops / ms / 1e9,
        flop_frac=flops / (ms * 1e-3) / peaks[0],
    )
    if sdpa:
        row.update(bench_sdpa(x, copies))
        best = min(
            (v for k, v in row.items() if k.startswith("sdpa_") and k.endswith("_us") and v), default=None
        )
        row["sdpa_us"] = best
        row["speedup"] = best / row["kernel_us"] if best else None
    return row


def bench_sdpa(x: dict, copies: int) -> dict:
    """SDPA with the dense boolean mask: GQA as the reference calls it, and with K/V pre-expanded."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, dense = x["q"], x["dense"]
    group = Q_HEADS // KV_HEADS
    result = {}

    def gqa():
        for k, v in x["kvs"]:
            sdpa(q, k, v, attn_mask=dense, enable_gqa=True)

    try:
        result["sdpa_gqa_us"] = time_graph(gqa, copies) * 1e3
    except torch.OutOfMemoryError:
        result["sdpa_gqa_us"] = None
    torch.cuda.empty_cache()
    try:
        expanded = [tuple(t.repeat_interleave(group, dim=1) for t in kv) for kv in x["kvs"]]

        def dense_heads():
            for k, v in expanded:
                sdpa(q, k, v, attn_mask=dense)

        result["sdpa_expanded_us"] = time_graph(dense_heads, copies) * 1e3
    except torch.OutOfMemoryError:
        result["sdpa_expanded_us"] = None
    torch.cuda.empty_cache()
    return result


def sweep(peaks: tuple[float, float]) -> list[dict]:
    """Try tile/split overrides on a few shapes (to tune :func:`pick_tiles` / :func:`pick_splits`)."""
    rows = []
    for batch, prefix, tree in [(1, 16384, 8), (8, 4096, 64), (8, 16384, 64), (32, 4096, 64), (1, 16384, 64)]:
        rows += _sweep_shape(batch, prefix, tree, peaks)
        torch.cuda.empty_cache()
    return rows


def _sweep_shape(batch: int, prefix: int, tree: int, peaks: tuple[float, float]) -> list[dict]:
    from kernels.tree_attention_triton import tree_attention_triton

    kv_bytes = 2 * batch * KV_HEADS * (prefix + tree) * HEAD_DIM * 2
    copies = max(1, min(8, math.ceil(L2_ROTATE_BYTES / kv_bytes)))
    x = make_inputs(batch, prefix, tree, copies, torch.Generator().manual_seed(1))
    rows = []
    configs = [
        (block_m, block_n, warps, stages, splits)
        for block_m in ((None, 64) if tree * Q_HEADS // KV_HEADS > 64 else (None,))
        for block_n in (64, 128)
        for warps in (4, 8)
        for stages in (2, 3)
        for splits in (None, 2.0)
    ]
    for block_m, block_n, warps, stages, splits in configs:
        kw = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
        ns = None
        if splits is not None:
            ns = max(1, int(_auto_splits(x["q"], x["kvs"][0][0], block_n, block_m) * splits))

        def run(kw=kw, ns=ns):
            for k, v in x["kvs"]:
                tree_attention_triton(x["q"], k, v, x["meta"], num_splits=ns, **kw)

        try:
            ms = time_graph(run, copies, min_ms=50)
        except Exception as exc:  # a config that does not compile (shared memory)
            print(f"sweep {batch},{prefix},{tree} {kw} {splits}: {type(exc).__name__}: {exc}"[:300])
            continue
        rows.append(
            dict(batch=batch, prefix=prefix, tree=tree, splits=splits, num_splits=ns, us=ms * 1e3, **kw)
            | dict(hbm_frac=kv_bytes / (ms * 1e-3) / peaks[1])
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _auto_splits(q, k, block_n, block_m=None):
    from kernels.tree_attention_triton import _sm_count, pick_splits, pick_tiles

    group = q.shape[1] // k.shape[1]
    block_m = pick_tiles(q, group, block_n, block_m)[0]
    m_tiles = math.ceil(group * q.shape[2] / block_m)
    kv_tiles = math.ceil(k.shape[2] / block_n)
    return pick_splits(q.shape[0] * k.shape[1] * m_tiles, kv_tiles, block_n, _sm_count(q.device))


def measure(args) -> dict:
    name = torch.cuda.get_device_name()
    peaks = next((p for key, p in PEAKS.items() if key in name), PEAKS["H100"])
    import triton

    result = dict(
        device=name,
        torch=torch.__version__,
        triton=triton.__version__,
        peak_flops=peaks[0],
        peak_bytes_per_s=peaks[1],
        shape=dict(q_heads=Q_HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype="bfloat16"),
        command="python -m pipelines.bench.kernel " + " ".join(sys.argv[1:]),
        rows=[],
    )
    for batch in args.batches:
        for prefix in args.prefixes:
            for tree in args.trees:
                row = bench_shape(batch, prefix, tree, peaks, sdpa=not args.no_sdpa)
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.sweep:
        result["sweep"] = sweep(peaks)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--batches", type=ints, default=[1, 8, 32])
    parser.add_argument("--prefixes", type=ints, default=[512, 4096, 16384])
    parser.add_argument("--trees", type=ints, default=[8, 32, 64])
    parser.add_argument("--json", help="where to write the measured results")
    parser.add_argument("--no-sdpa", action="store_true", help="time the kernel only")
    parser.add_argument("--sweep", action="store_true", help="also sweep tile/split overrides")
    parser.add_argument("--render", metavar="JSON", help="render a results JSON into docs/ and exit")
    parser.add_argument("--docs", default="docs", help="docs folder for --render")
    args = parser.parse_args(argv)
    if args.render:
        from pipelines.bench.kernel_report import render

        with open(args.render) as f:
            render(json.load(f), args.docs)
        return
    if not torch.cuda.is_available():
        raise SystemExit("pipelines.bench.kernel measures on a CUDA device; none is visible here")
    result = measure(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    from pipelines.bench.kernel_report import table

    print(table(result))


if __name__ == "__main__":
    main()

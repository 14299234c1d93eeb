"""Render tree-attention benchmark results (from :mod:`pipelines.bench.kernel`) into docs/.

Writes the table between ``<!-- kernel-bench:begin -->`` and ``<!-- kernel-bench:end -->`` in
``docs/benchmarks.md`` (the rest of that file belongs to other benchmarks and is kept) and a PNG
plot ``docs/kernel_tree_attention.png``.
"""

from __future__ import annotations

import os

from pipelines.common.report import figure, write_docs

BEGIN, END = "<!-- kernel-bench:begin -->", "<!-- kernel-bench:end -->"
PLOT = "kernel_tree_attention.png"


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(result: dict) -> str:
    """Markdown table of the measured rows."""
    lines = [
        "| batch | prefix | tree | kernel µs | SDPA µs (best) | speedup "
        "| GB/s | % HBM peak | TFLOP/s | % bf16 peak |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} | {r['prefix']} | {r['tree']} | {r['kernel_us']:.1f} | "
            f"{_fmt(r.get('sdpa_us'), '.1f')} | {_fmt(r.get('speedup'), '.2f')}× | {r['gbps']:.0f} | "
            f"{100 * r['hbm_frac']:.0f}% | {r['tflops']:.1f} | {100 * r['flop_frac']:.1f}% |"
        )
    return "\n".join(lines)


def section(result: dict) -> str:
    shape = result["shape"]
    peak_tb = result["peak_bytes_per_s"] / 1e12
    peak_tf = result["peak_flops"] / 1e12
    code = f" Code: commit `{result['commit']}`." if result.get("commit") else ""
    return f"""### Tree attention kernel (`kernels/tree_attention_triton.py`)

Measured on **{result["device"]}** (torch {result["torch"]}, triton {result["triton"]}), {shape["dtype"]},
{shape["q_heads"]} query / {shape["kv_heads"]} KV heads, head dim {shape["head_dim"]}; every sequence
in a batch has the same prefix and the same random tree, and queries all its tree nodes (the
verifier's case).{code} Command:

```
{result["command"]}
python -m pipelines.bench.kernel --render <that json>
```

Times are medians of CUDA-graph replays with K/V rotated over copies larger than L2. Bytes count
Q, K, V (prefix + tree), the mask and the output once; FLOPs count 4·B·Hq·T·(P+T)·D. Peaks are the
datasheet's: {peak_tb:.2f} TB/s HBM and {peak_tf:.0f} TFLOP/s dense bf16. "SDPA (best)" is the faster of
`scaled_dot_product_attention` with the dense boolean mask and `enable_gqa=True` (what the
reference does) and the same with K/V pre-expanded to every query head (expansion not timed).

{table(result)}

{_summary(result)}

![tree attention: kernel vs SDPA]({PLOT})"""


def _summary(result: dict) -> str:
    """Where the measured rows stand against the kernel issue's targets (from the rows, not typed)."""
    rows = {(r["batch"], r["prefix"], r["tree"]): r for r in result["rows"]}
    lines = []
    target = rows.get((32, 4096, 64))
    if target and target.get("speedup"):
        lines.append(
            f"- Batch 32, prefix 4096, tree 64: {target['speedup']:.2f}× faster than SDPA (target ≥ 2×)."
        )
    long_rows = [r for r in result["rows"] if r["prefix"] == max(rows_key[1] for rows_key in rows)]
    best = max(long_rows, key=lambda r: r["hbm_frac"], default=None)
    group = result["shape"]["q_heads"] // result["shape"]["kv_heads"]
    if best:
        big = max(long_rows, key=lambda r: (r["tree"], r["batch"]))
        lines.append(
            f"- Longest prefix: {100 * min(r['hbm_frac'] for r in long_rows):.0f}–"
            f"{100 * best['hbm_frac']:.0f}% of HBM peak (target ≥ 70% where bandwidth-bound). A tree of T "
            f"nodes with GQA group G does about T·G FLOP per byte, so the tree-{big['tree']} rows (≈"
            f"{big['tree'] * group}) sit near the H100 ridge (≈295): compute-heavy, at "
            f"{100 * big['flop_frac']:.0f}% of the bf16 peak here, not bandwidth-bound. Batch-1 rows fill "
            f"few SMs even with the KV range split, and include the combine pass's launch."
        )
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    rows = result["rows"]
    labels = [f"{r['batch']}/{r['prefix']}/{r['tree']}" for r in rows]
    xs = range(len(rows))
    with figure(path, 2, 1, size=(12, 7)) as (_, (ax1, ax2)):
        ax1.bar(xs, [100 * r["hbm_frac"] for r in rows], label="% HBM peak")
        ax1.plot(xs, [100 * r["flop_frac"] for r in rows], "o", color="C3", label="% bf16 TFLOP/s peak")
        ax1.axhline(70, color="gray", linestyle="--", linewidth=1)
        ax1.set_ylabel("% of peak")
        ax1.legend(loc="upper left")
        ax1.set_title(f"Tree attention kernel on {result['device']} (bf16, 32 q / 8 kv heads, d=128)")
        ax2.bar(xs, [r.get("speedup") or 0 for r in rows], color="C2")
        ax2.axhline(1, color="gray", linewidth=1)
        ax2.set_ylabel("speedup vs SDPA dense mask")
        ax2.set_xticks(list(xs), labels, rotation=70, fontsize=8)
        ax2.set_xlabel("batch / prefix / tree")


def render(result: dict, docs: str = "docs") -> None:
    os.makedirs(docs, exist_ok=True)
    write_docs(os.path.join(docs, "benchmarks.md"), section(result), BEGIN, END)
    plot(result, os.path.join(docs, PLOT))

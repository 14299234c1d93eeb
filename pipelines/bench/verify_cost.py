"""Measure what a verifier step costs as its draft tree grows, per dtype — the room speculation
lives in — next to Hugging Face ``generate``'s time per token on the same weights.

    python -m pipelines.bench.verify_cost [configs/verify_cost.yaml] dtypes=[float32,bfloat16]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from actors.models import load_model
from actors.tree_model import TreeInput, TreeModel


@dataclass
class VerifyCostConfig:
    """Settings of the verifier cost measurement.

    Attributes:
        model: the verifier (``default`` = embedded SmolLM2-135M-Instruct).
        dtypes: dtypes to measure.
        prefix: cached tokens before the tree.
        tree_sizes: draft nodes per step to time (a step also feeds the last committed token).
        repeats: timed steps per size (the median is reported).
        hf_tokens: tokens HF ``generate`` decodes for its per-token time.
    """

    model: str = "default"
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    prefix: int = 300
    tree_sizes: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    repeats: int = 5
    hf_tokens: int = 32


CLI_FLAGS = {"--model": "model", "--prefix": "prefix"}


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def step_ms(runner: TreeModel, prefix: int, nodes: int, repeats: int) -> float:
    """One verifier step: the last committed token plus a star of ``nodes`` drafts under it."""
    size = nodes + 1
    ancestors = torch.eye(size, dtype=torch.bool)
    ancestors[:, 0] = True
    tokens = list(range(2000, 2000 + size))
    step = TreeInput(0, prefix, size, tokens, [prefix] + [prefix + 1] * nodes, ancestors)
    return median_ms(lambda: runner.logits(runner.forward([step])[0, :size]), repeats)


def measure(cfg: VerifyCostConfig, dtype: str) -> dict:
    loaded = load_model(cfg.model, dtype)
    runner = TreeModel(loaded.model, 1, cfg.prefix + max(cfg.tree_sizes) + 2)
    prompt = list(range(1000, 1000 + cfg.prefix))
    causal = torch.ones(cfg.prefix, cfg.prefix, dtype=torch.bool).tril()
    runner.forward([TreeInput(0, 0, cfg.prefix, prompt, list(range(cfg.prefix)), causal)])
    steps = {n: step_ms(runner, cfg.prefix, n, cfg.repeats) for n in cfg.tree_sizes}
    ids = torch.tensor([prompt])
    n = cfg.hf_tokens
    generate = lambda: loaded.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
    hf_ms = median_ms(generate, 1) / n
    return {"dtype": dtype, "step_ms": steps, "hf_generate_ms_per_token": hf_ms}


def main(cfg: VerifyCostConfig) -> list[dict]:
    with torch.inference_mode():
        results = [measure(cfg, dtype) for dtype in cfg.dtypes]
    sizes = cfg.tree_sizes
    threads = torch.get_num_threads()
    print(f"verifier step (ms) over a {cfg.prefix}-token prefix, by draft nodes; {threads} threads")
    print("| dtype | " + " | ".join(f"{n} nodes" for n in sizes) + " | HF generate ms/token |")
    print("|---" * (len(sizes) + 2) + "|")
    for r in results:
        cells = " | ".join(f"{r['step_ms'][n]:.1f}" for n in sizes)
        print(f"| {r['dtype']} | {cells} | {r['hf_generate_ms_per_token']:.1f} |")
    return results


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("verify-cost", sys.argv[1:]))

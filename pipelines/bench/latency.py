"""Benchmark Tandem side by side with Hugging Face ``generate`` and HF assisted generation.

One process, one set of weights, greedy, batch 1; the systems take turns prompt by prompt (the
order rotates) so that machine drift hits them alike. Writes a JSON report, a table in
``docs/benchmarks.md`` (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``, one block per
model/drafter/dtype/device) and a PNG bar plot of tokens/s.

    python -m pipelines.bench.latency [configs/bench.yaml] key=value ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from actors.cpu_linear import stock_copy
from actors.messages import SamplingParams
from pipelines.bench.latency_config import BenchConfig
from pipelines.bench.latency_report import (
    BEGIN,
    END,
    TANDEM,
    docs_block,
    environment,
    plot_path,
    print_table,
    write_plot,
)
from pipelines.common.prompts import load_prompts
from pipelines.common.report import write_report

HF_GENERATE = "hf_generate"
HF_ASSISTED = ("hf_prompt_lookup", "hf_assisted_model")

CLI_FLAGS = {
    "--prompts": "prompts",
    "--limit": "limit",
    "--max-new-tokens": "max_new_tokens",
    "--drafter": "engine.drafter",
    "--dtype": "engine.dtype",
    "--device": "engine.device",
    "--model": "engine.model",
    "--out": "out",
    "--docs": "docs",
    "--plot": "plot",
}


# A system maps prompt token ids to (new token ids, verifier steps or None).
System = Callable[[list[int]], tuple[list[int], int | None]]


def hf_system(model, engine, max_new_tokens: int, **assist) -> System:
    """HF ``generate`` on ``model`` (a stock copy of the engine's verifier), greedy, with the
    engine's tokenizer and stop set; ``assist`` turns on assisted generation."""
    eos, pad = sorted(stop_ids(engine)), engine.tokenizer.pad_token_id
    pad = eos[0] if pad is None else pad

    def run(prompt_ids: list[int]) -> tuple[list[int], int | None]:
        input_ids = torch.tensor([prompt_ids], device=engine.device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,  # the same stop set as Tandem's
            pad_token_id=pad,
            **assist,
        )
        return output[0, len(prompt_ids) :].tolist(), None

    return run


def stop_ids(engine) -> set[int]:
    """The token ids that end generation: the engine's own set, else the tokenizer's EOS."""
    return set(getattr(engine, "eos_ids", None) or {engine.tokenizer.eos_token_id})


def tandem_system(engine, max_new_tokens: int) -> System:
    params = SamplingParams(max_new_tokens=max_new_tokens)

    def run(prompt_ids: list[int]) -> tuple[list[int], int | None]:
        (result,) = engine.generate([prompt_ids], params)
        return list(result.token_ids), result.stats.steps

    return run


def stock_peers(engine) -> tuple:
    """The verifier and the drafter model (or None) as transformers ships them, for the HF
    systems: the engine may have swapped in its own CPU linear layers."""
    drafter = getattr(engine, "drafter_model", None)
    return stock_copy(engine.model), stock_copy(drafter) if drafter is not None else None


def build_systems(engine, cfg: BenchConfig, max_new_tokens: int, peers: tuple) -> dict[str, System]:
    model, drafter = peers
    systems = {HF_GENERATE: hf_system(model, engine, max_new_tokens)}
    if cfg.assisted:
        lookup = {"prompt_lookup_num_tokens": cfg.prompt_lookup_num_tokens}
        systems["hf_prompt_lookup"] = hf_system(model, engine, max_new_tokens, **lookup)
        if drafter is not None:
            systems["hf_assisted_model"] = hf_system(model, engine, max_new_tokens, assistant_model=drafter)
    systems[TANDEM] = tandem_system(engine, max_new_tokens)
    return systems


def trim_eos(token_ids: list[int], eos: set[int]) -> list[int]:
    """Drop a final EOS so that systems which do and do not return it count alike."""
    return token_ids[:-1] if token_ids and token_ids[-1] in eos else token_ids


def run_interleaved(systems: dict[str, System], prompts: list[list[int]], eos: set[int]) -> dict:
    """Per system, per prompt: ``token_ids``, ``seconds``, ``steps``. The order rotates per prompt."""
    records: dict[str, list[dict]] = {name: [] for name in systems}
    names = list(systems)
    for index, prompt_ids in enumerate(prompts):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            token_ids, steps = systems[name](prompt_ids)
            seconds = time.perf_counter() - start
            records[name].append({"token_ids": trim_eos(token_ids, eos), "seconds": seconds, "steps": steps})
        print(progress_line(index, len(prompts), len(prompt_ids), records), flush=True)
    return records


def progress_line(index: int, total: int, prompt_len: int, records: dict[str, list[dict]]) -> str:
    rates = [f"{name} {rate(rows[-1:]):6.1f}" for name, rows in records.items()]
    same = records[TANDEM][-1]["token_ids"] == records[HF_GENERATE][-1]["token_ids"]
    verdict = "match" if same else "MISMATCH"
    return f"[{index + 1:>3}/{total}] {prompt_len:>4} prompt tokens | {' | '.join(rates)} tok/s | {verdict}"


def rate(rows: list[dict]) -> float:
    """Total new tokens over total seconds (not a mean of per-prompt rates)."""
    seconds = sum(row["seconds"] for row in rows)
    return sum(len(row["token_ids"]) for row in rows) / seconds if seconds else 0.0


def summarize(records: dict[str, list[dict]]) -> dict:
    """``runs`` (one entry per system) and ``summary`` from per-prompt records."""
    reference = [row["token_ids"] for row in records[HF_GENERATE]]
    runs = []
    for name, rows in records.items():
        details = [prompt_detail(row, ref) for row, ref in zip(rows, reference, strict=True)]
        runs.append(
            {
                "name": name,
                "tokens_per_s": rate(rows),
                "new_tokens": sum(len(row["token_ids"]) for row in rows),
                "seconds": sum(row["seconds"] for row in rows),
                "greedy_mismatches": sum(detail["first_divergence"] is not None for detail in details),
                "per_prompt": details,
            }
        )
    by_name = {run["name"]: run for run in runs}
    tandem, base = by_name[TANDEM], by_name[HF_GENERATE]
    assisted = [by_name[name] for name in HF_ASSISTED if name in by_name]
    best = max(assisted, key=lambda run: run["tokens_per_s"]) if assisted else None
    steps = sum(row["steps"] or 0 for row in records[TANDEM])
    summary = {
        "prompts": len(reference),
        "speedup_vs_hf_generate": ratio(tandem["tokens_per_s"], base["tokens_per_s"]),
        "speedup_vs_hf_assisted": ratio(tandem["tokens_per_s"], best["tokens_per_s"]) if best else None,
        "hf_assisted_baseline": best["name"] if best else None,
        "mean_accepted_tokens": tandem["new_tokens"] / steps if steps else None,
        "greedy_mismatches": tandem["greedy_mismatches"],
    }
    if "hf_prompt_lookup" in by_name:
        summary["speedup_vs_hf_prompt_lookup"] = ratio(
            tandem["tokens_per_s"], by_name["hf_prompt_lookup"]["tokens_per_s"]
        )
    return {"runs": runs, "summary": summary}


def prompt_detail(row: dict, reference: list[int]) -> dict:
    """One prompt's numbers; ``first_divergence`` = index of the first token that differs from HF generate."""
    token_ids = row["token_ids"]
    same = [a == b for a, b in zip(token_ids, reference, strict=False)]
    diverge = None if token_ids == reference else (same.index(False) if False in same else len(same))
    detail = {"new_tokens": len(token_ids), "seconds": row["seconds"], "first_divergence": diverge}
    if row["steps"] is not None:
        detail["steps"] = row["steps"]
    return detail


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def main(cfg: BenchConfig, engine=None) -> dict:
    """Run the benchmark; ``engine`` may be injected (tests), else built from ``cfg.engine``."""
    prompts = load_prompts(cfg.prompts, cfg.limit)
    if engine is None:
        from actors.engine import Engine

        engine = Engine(cfg.engine)
    prompt_ids = [engine.encode(prompt) for prompt in prompts]
    peers = stock_peers(engine)
    systems = build_systems(engine, cfg, cfg.max_new_tokens, peers)
    print(f"bench: {len(prompts)} prompts, systems: {', '.join(systems)}", flush=True)
    if cfg.warmup:  # short: it only has to load kernels and fill allocator caches
        for system in build_systems(engine, cfg, min(cfg.max_new_tokens, 16), peers).values():
            system(prompt_ids[0])
    report = summarize(run_interleaved(systems, prompt_ids, stop_ids(engine)))
    report["config"] = {"bench": asdict(cfg), "environment": environment(cfg, engine)}
    print_table(report)
    plot = plot_path(cfg, torch.device(engine.device).type)
    block, draw = partial(docs_block, report, plot, Path(cfg.docs)), partial(write_plot, report)
    write_report(report, cfg.out, cfg.docs, block, (BEGIN, END), plot, draw)
    return report


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("bench", sys.argv[1:]))

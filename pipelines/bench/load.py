"""Load benchmark of the Serve app: concurrent streaming clients, speculation on vs off, and
Hugging Face ``generate`` run sequentially on the same prompts, in one process.

tandem load-bench [configs/load_bench.yaml] [concurrency=[1,4,8]] [requests=16] [max_tokens=128]

For each mode (the configured drafter, then ``none``) the app is deployed on a local Ray, warmed
up, and driven by ``c`` clients (the real ``openai`` async client, streaming) that share a queue
of ``requests`` chat prompts. Reported per load: aggregate output tokens/s (all completion
tokens over the wall time), request latency p50/p99 and time to first token p50.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipelines.common.prompts import load_prompts
from pipelines.common.report import command_line, figure, write_report
from pipelines.serve import ServeConfig

BEGIN, END = "<!-- load-bench:begin -->", "<!-- load-bench:end -->"


@dataclass
class LoadBenchConfig:
    """Settings of ``tandem load-bench``.

    Attributes:
        serve: the app under test (its drafter is the "speculation on" mode).
        prompts: ``humaneval`` or a JSONL file (see ``tandem bench``).
        requests: requests per load level (the first ``requests`` prompts).
        concurrency: numbers of concurrent streaming clients.
        max_tokens: ``max_tokens`` of every request (greedy).
        hf_baseline: also time HF ``generate`` on the same prompts, one after another.
        out: JSON results file; empty = none (the table is printed either way).
        docs: markdown file that gets the results table (``docs/benchmarks.md`` for the
            repository's record); empty = none.
        plot: PNG plot path (null = none).
    """

    serve: ServeConfig = field(default_factory=lambda: ServeConfig(port=8123))
    prompts: str = "humaneval"
    requests: int = 16
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 8])
    max_tokens: int = 128
    hf_baseline: bool = True
    out: str = ""
    docs: str | None = ""
    plot: str | None = ""

    def __post_init__(self) -> None:
        if self.requests <= 0 or self.max_tokens <= 0 or not self.concurrency or min(self.concurrency) <= 0:
            raise ValueError("requests, max_tokens and every concurrency must be > 0")


CLI_FLAGS = {"--requests": "requests", "--max-tokens": "max_tokens", "--out": "out"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and any(c.delta.content for c in chunk.choices):
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": tokens}


async def drive(url: str, model: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    """``clients`` workers stream ``prompts`` from a shared queue; aggregate figures."""
    import openai

    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    rows: list[dict] = []
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600) as client:

        async def worker() -> None:
            while not queue.empty():
                rows.append(await one_request(client, model, queue.get_nowait(), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
    return summarize(rows, time.perf_counter() - start)


def summarize(rows: list[dict], seconds: float) -> dict:
    latencies = [r["latency"] for r in rows]
    return {
        "requests": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in rows) / seconds, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 2),
        "latency_p99_s": round(percentile(latencies, 0.99), 2),
        "ttft_p50_s": round(statistics.median(r["ttft"] for r in rows), 3),
    }


def run_mode(cfg: LoadBenchConfig, drafter: str, prompts: list[str]) -> list[dict]:
    """Deploy the app with ``drafter``, warm it up, drive every load level."""
    from ray import serve

    from pipelines.serve.app import build

    app = dataclasses.replace(cfg.serve, engine=dataclasses.replace(cfg.serve.engine, drafter=drafter))
    serve.run(build(app), name="tandem", route_prefix="/")
    url, model = f"http://{app.host}:{app.port}/v1", app.model_name()
    asyncio.run(drive(url, model, prompts[:2], 2, 16))  # warm-up: first-request costs, budget fit
    runs = []
    for clients in cfg.concurrency:
        result = asyncio.run(drive(url, model, prompts, clients, cfg.max_tokens))
        runs.append({"drafter": drafter, "concurrency": clients, **result})
        print(f"[load-bench] drafter={drafter} clients={clients}: {result}", file=sys.stderr)
    serve.delete("tandem")
    return runs


def hf_sequential(cfg: LoadBenchConfig, prompts: list[str]) -> dict:
    """HF ``generate`` on the same model, dtype and chat-wrapped prompts, one request at a time."""
    import torch

    from actors.engine import eos_token_ids
    from actors.models import encode_chat, load_model

    loaded = load_model(cfg.serve.engine.model, cfg.serve.engine.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    eos = sorted(eos_token_ids(model, tokenizer))
    rows = []
    start = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([encode_chat(tokenizer, [{"role": "user", "content": prompt}])])
        begin = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=cfg.max_tokens,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
        new = out[0, ids.shape[1] :].tolist()
        tokens = len(new) - (1 if new and new[-1] in eos else 0)
        rows.append({"latency": time.perf_counter() - begin, "ttft": 0.0, "tokens": tokens})
    result = summarize(rows, time.perf_counter() - start)
    print(f"[load-bench] HF generate sequential: {result}", file=sys.stderr)
    return {"drafter": "hf_generate", "concurrency": 1, **result}


def main(cfg: LoadBenchConfig) -> dict:
    import ray
    from ray import serve

    prompts = load_prompts(cfg.prompts, cfg.requests)
    baseline = [hf_sequential(cfg, prompts)] if cfg.hf_baseline else []  # before Ray takes the cores
    ray.init(address="local", num_cpus=max(2, cfg.serve.verifier.placement.num_cpus))
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    try:
        runs = run_mode(cfg, cfg.serve.engine.drafter, prompts) + run_mode(cfg, "none", prompts)
    finally:
        serve.shutdown()
        ray.shutdown()
    runs += baseline
    report = {
        "command": command_line(),
        "config": {
            "requests": cfg.requests,
            "max_tokens": cfg.max_tokens,
            "model": cfg.serve.engine.model,
            "dtype": cfg.serve.engine.dtype,
        },
        "runs": runs,
    }
    block, draw = partial(docs_block, report, cfg), partial(write_plot, runs)
    write_report(report, cfg.out, cfg.docs, block, (BEGIN, END), cfg.plot, draw)
    return report


def docs_block(report: dict, cfg: LoadBenchConfig) -> str:
    runs = report["runs"]
    lines = [
        "### Serving under load (`tandem serve`, embedded model, CPU)",
        "",
        f"`{report['command']}` — {cfg.requests} HumanEval chat requests per load, "
        f"max_tokens {cfg.max_tokens}, greedy, streaming clients (`openai.AsyncOpenAI`).",
        "",
        "| system | clients | output tok/s | latency p50 (s) | latency p99 (s) | TTFT p50 (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"none": "speculation off", "hf_generate": "HF `generate`, sequential"}
    for run in runs:
        name = names.get(run["drafter"], f"speculation on (`{run['drafter']}`)")
        ttft = "—" if run["drafter"] == "hf_generate" else f"{run['ttft_p50_s']:.3f}"  # not streamed
        lines.append(
            f"| {name} | {run['concurrency']} | {run['tokens_per_s']:.1f} | {run['latency_p50_s']:.2f} "
            f"| {run['latency_p99_s']:.2f} | {ttft} |"
        )
    if cfg.plot:
        lines += ["", f"![serving under load]({Path(cfg.plot).name})"]
    return "\n".join(lines)


def write_plot(runs: list[dict], path: Path) -> None:
    with figure(path, dpi=120) as (_, ax):
        for drafter in dict.fromkeys(r["drafter"] for r in runs if r["drafter"] != "hf_generate"):
            points = [(r["concurrency"], r["tokens_per_s"]) for r in runs if r["drafter"] == drafter]
            label = "speculation off" if drafter == "none" else f"speculation on ({drafter})"
            ax.plot(*zip(*points), marker="o", label=label)
        for run in runs:
            if run["drafter"] == "hf_generate":
                ax.axhline(run["tokens_per_s"], color="gray", linestyle="--", label="HF generate, sequential")
        ax.set_xlabel("concurrent streaming clients")
        ax.set_ylabel("aggregate output tokens/s")
        ax.legend()


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("load-bench", sys.argv[1:]))

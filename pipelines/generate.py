"""Generate text with the speculative engine: one prompt in this process, or a whole dataset as a
Ray Data batch job (``input=`` set; see ``pipelines/batch``).

python -m pipelines.generate [configs/generate.yaml] prompt="..." engine.drafter=ngram
tandem generate --prompt "..." [--drafter ngram] [--max-new-tokens 128]
python -m pipelines.generate configs/generate.yaml input=s3://bucket/prompts/ output=s3://bucket/out/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from actors.engine import Engine, EngineConfig, GenerationResult
from actors.messages import SamplingParams
from pipelines.batch.config import BatchConfig, StoreConfig

if TYPE_CHECKING:
    from pipelines.batch.job import Summary


@dataclass
class GenerateConfig:
    """Settings of ``tandem generate``.

    Attributes:
        engine: the model, drafter and engine settings.
        prompt: the user message (wrapped in the chat template when ``chat``).
        chat: apply the model's chat template to ``prompt``.
        max_new_tokens: generated tokens at most.
        temperature: 0 for greedy; otherwise sampling temperature.
        top_p: nucleus sampling mass.
        top_k: keep the k most likely tokens (0 = all).
        seed: sampling seed.
        stop: strings that end generation.
        input: a batch job's prompts: Parquet or JSONL, a file, a folder or a glob, local or
            ``s3://``; when set, ``prompt`` is not used. Rows hold ``prompt`` or chat ``messages``,
            optionally ``id`` and sampling columns (``max_new_tokens``, ``temperature``, ``top_p``,
            ``top_k``, ``seed``, ``stop``) that override the values above.
        output: a batch job's output folder (local or ``s3://``): one Parquet file per shard.
        batch: the batch job's shards and engine actor pool.
        s3: object-store endpoint and credentials (default: the standard AWS variables).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    prompt: str = ""
    chat: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    input: str = ""
    output: str = ""
    batch: BatchConfig = field(default_factory=BatchConfig)
    s3: StoreConfig = field(default_factory=StoreConfig)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop),
            seed=self.seed,
        )


CLI_FLAGS = {
    "--prompt": "prompt",
    "--max-new-tokens": "max_new_tokens",
    "--temperature": "temperature",
    "--drafter": "engine.drafter",
    "--dtype": "engine.dtype",
    "--model": "engine.model",
    "--input": "input",
    "--output": "output",
}


def main(cfg: GenerateConfig) -> GenerationResult | Summary:
    """One prompt: print its text and statistics. With ``input``: run the batch job."""
    if cfg.input or cfg.output:
        if not (cfg.input and cfg.output):
            raise ValueError("a batch job needs both input=PATH and output=PATH")
        from pipelines.batch.job import run  # Ray is imported only for batch jobs

        return run(cfg)
    if not cfg.prompt:
        raise ValueError("prompt is empty: pass --prompt TEXT (or prompt=TEXT)")
    params = cfg.sampling()  # validates before the model loads
    engine = Engine(cfg.engine)
    (result,) = engine.generate([engine.encode(cfg.prompt, chat=cfg.chat)], params)
    print(result.text)
    print(format_stats(result, cfg.engine), file=sys.stderr)
    return result


def format_stats(result: GenerationResult, engine: EngineConfig) -> str:
    stats = result.stats
    acceptance = stats.accepted / stats.drafted if stats.drafted else 0.0
    return (
        f"\n[tandem] {stats.new_tokens} tokens in {stats.seconds:.2f} s = {stats.tokens_per_s:.1f} tok/s | "
        f"drafter {engine.drafter} | {stats.steps} verifier steps, "
        f"{stats.mean_accepted_tokens:.2f} tokens/step | drafted {stats.drafted}, accepted {stats.accepted} "
        f"({acceptance:.0%}) | finish: {result.finish_reason}"
    )


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("generate", sys.argv[1:]))

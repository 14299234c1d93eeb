"""Generate text with the speculative engine: one prompt in this process, or a whole dataset as a
Ray Data batch job (``input=`` set; see ``pipelines/batch``).

python -m pipelines.generate [configs/generate.yaml] prompt="..." engine.drafter=ngram
tandem generate --prompt "..." [--drafter ngram] [--max-new-tokens 128]
python -m pipelines.generate configs/generate.yaml input=s3://bucket/prompts/ output=s3://bucket/out/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from actors.engine import Engine, EngineConfig, GenerationResult
from pipelines.batch.config import BatchJobConfig
from pipelines.batch.job import Summary


@dataclass
class GenerateConfig(BatchJobConfig):
    """Settings of ``tandem generate``: one ``prompt`` in this process, or, with ``input`` and
    ``output`` set, the batch job of :class:`~pipelines.batch.config.BatchJobConfig` (whose fields,
    sampling defaults included, it shares).

    Attributes:
        prompt: the user message (wrapped in the chat template when ``chat``); unused by a batch job.
    """

    prompt: str = ""


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

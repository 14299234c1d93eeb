"""Engine settings and the checks and lookups that go with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.drafters.spec import parse_drafter
from actors.models import resolve_dtype


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
        decoder: how the verifier and model drafters run their layers: ``auto`` (Tandem's lean
            forward for Llama, Qwen2 and Mistral, transformers' for the rest) or ``transformers``.
        max_batch_size: sequences decoded together (KV cache slots).
        max_model_len: prompt + generated tokens per sequence (KV cache length).
        max_draft_nodes: upper bound on a draft tree's size.
        max_draft_depth: upper bound on a draft tree's depth.
        draft_vocab: model and early-exit drafters draft only among the first ``draft_vocab``
            token ids (0 = the whole vocabulary): their LM head shrinks in proportion. BPE
            tokenizers number tokens in merge order, so the first ids are the frequent ones.
        adaptive_budget: pick each step's tree size from measured verifier cost and acceptance.
        async_speculation: draft step r+1 while step r is verified (see the module docstring);
            None = only when the drafter runs elsewhere (in-process, drafting ahead competes
            with the verifier for the same cores: measured no faster on CPU).
        drafter_retry_s: after the drafter failed to answer, decode without it this long.
    """

    model: str = "default"
    drafter: str = "ngram"
    dtype: str = "float32"
    device: str = "auto"
    attention: str = "auto"
    decoder: str = "auto"
    max_batch_size: int = 8
    max_model_len: int = 2048
    max_draft_nodes: int = 32
    max_draft_depth: int = 32
    draft_vocab: int = 0
    adaptive_budget: bool = True
    async_speculation: bool | None = None
    drafter_retry_s: float = 2.0


def validate(config: EngineConfig) -> None:
    """Reject bad engine settings up front, naming the key."""
    resolve_dtype(config.dtype)
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {config.device!r}")
    if config.attention not in ("auto", "triton", "reference"):
        raise ValueError(f"attention must be auto, triton or reference, got {config.attention!r}")
    if config.decoder not in ("auto", "transformers"):
        raise ValueError(f"decoder must be auto or transformers, got {config.decoder!r}")
    for key in ("max_batch_size", "max_model_len", "max_draft_depth"):
        if getattr(config, key) <= 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")
    for key in ("max_draft_nodes", "draft_vocab"):
        if getattr(config, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(config, key)}")
    parse_drafter(config.drafter)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available")
    return torch.device(device)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends generation: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, list) else {configured}
    return ids

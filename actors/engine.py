"""The in-process speculative engine: propose → verify → commit over a batch of sequences."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from actors.budget import BudgetController
from actors.drafters import build_drafter, parse_drafter
from actors.drafters.base import Drafter
from actors.messages import DraftTree, SamplingParams, Verdict
from actors.models import LoadedModel, load_model, resolve_dtype
from actors.verifiers.verifier import Verifier


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
    max_draft_depth: int = 32
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


@dataclass
class _Request:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    finish_reason: str | None = None
    text: str = ""


class Engine:
    """Speculative generation with one drafter and one verifier in this process.

    Requests join up to ``max_batch_size`` at a time and leave as soon as they finish; each
    step proposes a tree per running request, verifies all of them in one forward pass and
    commits the verdicts.
    """

    def __init__(
        self, config: EngineConfig, loaded: LoadedModel | None = None, drafter: Drafter | None = None
    ):
        """Build from ``config``. ``loaded`` injects an already loaded verifier and ``drafter`` a
        drafter object in place of ``config.drafter`` (tests, tools)."""
        validate(config)
        self.config = config
        self.device = resolve_device(config.device)
        loaded = loaded or load_model(config.model, config.dtype)
        self.model = loaded.model.to(self.device)
        self.tokenizer = loaded.tokenizer
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.verifier = Verifier(self.model, config.max_batch_size, config.max_model_len, config.attention)
        self.drafter = drafter or build_drafter(config, self.model, self.device)
        self.drafter_model = getattr(self.drafter, "assistant_model", None)
        self.budget = BudgetController(
            config.max_draft_nodes if self.drafter else 0, config.max_draft_depth, config.adaptive_budget
        )
        self._next_id = 0

    def encode(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of a prompt, wrapped in the model's chat template when ``chat``."""
        if not text:
            raise ValueError("prompt is empty")
        if chat and self.tokenizer.chat_template:
            encoded = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        return self.tokenizer.encode(text)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[GenerationResult]:
        """Generate a continuation for every prompt (token ids); results in prompt order."""
        params = params or SamplingParams()
        per_request = params if isinstance(params, list) else [params] * len(prompts)
        if len(per_request) != len(prompts):
            raise ValueError("give one SamplingParams per prompt, or one for all")
        requests = [self._request(ids, p) for ids, p in zip(prompts, per_request)]
        waiting, running = list(requests), {}
        while waiting or running:
            while waiting and self.verifier.free_slots:
                self._admit(waiting.pop(0), running)
            self._step(running)
        return [self._result(r) for r in requests]

    def _request(self, prompt_ids: list[int], params: SamplingParams) -> _Request:
        if not prompt_ids:
            raise ValueError("prompt is empty")
        room = self.config.max_model_len - self.config.max_draft_nodes - 1
        if len(prompt_ids) >= room:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; max_model_len={self.config.max_model_len} "
                f"leaves room for at most {room - 1}"
            )
        self._next_id += 1
        return _Request(self._next_id, list(prompt_ids), params)

    def _admit(self, request: _Request, running: dict[int, _Request]) -> None:
        self.verifier.add(request.seq_id, request.prompt_ids, request.params)
        if self.drafter:
            self.drafter.add(request.seq_id, request.prompt_ids)
        request.stats.seconds = -time.perf_counter()
        running[request.seq_id] = request

    def _step(self, running: dict[int, _Request]) -> None:
        seq_ids = list(running)
        budget = self.budget.plan(len(seq_ids))
        if self.drafter and budget.max_nodes:
            trees = self.drafter.propose(seq_ids, [budget] * len(seq_ids))
        else:
            trees = [DraftTree.empty(seq_id) for seq_id in seq_ids]
        prefill = any(len(self.verifier.sequences[s].pending) > 1 for s in seq_ids)
        start = time.perf_counter()
        verdicts = self.verifier.verify(trees, topk=self.drafter.wants_topk if self.drafter else 0)
        if not prefill:  # a prompt's prefill would skew the decode cost fit
            self.budget.observe(sum(len(t) + 1 for t in trees), time.perf_counter() - start)
        if self.drafter:
            self.drafter.commit(verdicts)
        for verdict in verdicts:
            request = running[verdict.seq_id]
            self._extend(request, verdict)
            if request.finish_reason or self._out_of_room(request):
                request.finish_reason = request.finish_reason or "length"
                request.stats.seconds += time.perf_counter()
                self.verifier.release(request.seq_id)
                if self.drafter:
                    self.drafter.release(request.seq_id)
                del running[request.seq_id]

    def _extend(self, request: _Request, verdict: Verdict) -> None:
        """Append a verdict's tokens, stopping at EOS, a stop string or the token limit."""
        stats, params = request.stats, request.params
        stats.steps += 1
        stats.drafted += verdict.num_drafted
        stats.accepted += verdict.num_accepted
        for token in verdict.tokens:
            request.token_ids.append(token)
            if token in self.eos_ids and not params.ignore_eos:
                request.finish_reason = "stop"
                break
            if len(request.token_ids) >= params.max_new_tokens:
                request.finish_reason = "length"
                break
        stats.new_tokens = len(request.token_ids)
        request.text = self.tokenizer.decode(request.token_ids, skip_special_tokens=True)
        for stop in params.stop:
            cut = request.text.find(stop)
            if cut >= 0:
                request.text = request.text[:cut]
                request.finish_reason = "stop"

    def _out_of_room(self, request: _Request) -> bool:
        """True when one more step (a tree plus its token) could overflow the KV cache."""
        used = self.verifier.context_len(request.seq_id)
        return used + self.config.max_draft_nodes + 1 > self.config.max_model_len

    def _result(self, request: _Request) -> GenerationResult:
        return GenerationResult(
            request.text, request.token_ids, request.finish_reason or "length", request.stats
        )


def validate(config: EngineConfig) -> None:
    """Reject bad engine settings up front, naming the key."""
    resolve_dtype(config.dtype)
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {config.device!r}")
    if config.attention not in ("auto", "triton", "reference"):
        raise ValueError(f"attention must be auto, triton or reference, got {config.attention!r}")
    for key in ("max_batch_size", "max_model_len", "max_draft_depth"):
        if getattr(config, key) <= 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")
    if config.max_draft_nodes < 0:
        raise ValueError(f"max_draft_nodes must be >= 0, got {config.max_draft_nodes}")
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

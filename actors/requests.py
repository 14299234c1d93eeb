"""A request's life in the engine: its tokens, stopping rules, statistics and streamed updates."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from actors.messages import SamplingParams, Verdict


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
    """One finished request.

    Attributes:
        text: the decoded ``token_ids`` (special tokens skipped), cut before a stop string.
        token_ids: the generated tokens; an EOS that ended generation is the last one, and so is
            the token that completed a stop string (see :meth:`Request.extend`).
        finish_reason: ``stop`` (EOS or stop string), ``length`` or ``abort``.
        stats: speculation statistics.
        logprobs: one per entry of ``token_ids`` when the request asked for them
            (:attr:`~actors.messages.SamplingParams.logprobs`), else None.
        policy_version: the version of the verifier weights that generated it
            (:meth:`~actors.engine.Engine.load_weights`; 0 = the weights the engine started with).
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string), "length" or "abort"
    stats: GenerationStats
    logprobs: list[float] | None = None
    policy_version: int = 0


@dataclass(frozen=True)
class RequestUpdate:
    """What one step added to a streamed request.

    Attributes:
        text: new text since the previous update (held back while it may still turn out to be
            part of a stop string or an unfinished character).
        token_ids: new token ids since the previous update.
        finish_reason: set on the last update: ``stop``, ``length`` or ``abort``.
        stats: the request's statistics so far.
        prompt_tokens: the prompt's length.
        logprobs: the log-probabilities of ``token_ids``, when the request asked for them.
    """

    text: str
    token_ids: list[int]
    finish_reason: str | None
    stats: GenerationStats
    prompt_tokens: int
    logprobs: list[float] | None = None


@dataclass
class Request:
    """One request from admission to its last token."""

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    finish_reason: str | None = None
    text: str = ""
    cancelled: bool = False
    error: str | None = None  # why the engine failed this request (finish_reason "error")
    updates: asyncio.Queue | None = None  # set when the request is streamed
    policy_version: int = 0  # of the weights it is generated with
    logprobs: list[float] | None = None  # one per token, when params.logprobs
    _sent_tokens: int = 0
    _sent_chars: int = 0

    def __post_init__(self) -> None:
        if self.params.logprobs and self.logprobs is None:
            self.logprobs = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def start(self) -> None:
        self.stats.seconds = -time.perf_counter()

    def extend(self, verdict: Verdict, eos_ids: set[int], tokenizer) -> None:
        """Append a verdict's tokens (and their log-probs), stopping at EOS, a stop string or the
        token limit.

        An EOS that ends generation is kept as the last token (its text is empty). A stop string
        ends generation at the token that completes it, as plain decoding would, whatever the
        number of tokens one step commits: ``token_ids`` (and ``logprobs``) become the shortest
        prefix whose decoded text contains one of ``params.stop``, and ``text`` is that decoded
        text cut where the earliest stop string in it starts. So ``text`` is always
        ``decode(token_ids)`` cut at a stop string, and the tokens that carried the stop string
        stay (like an EOS, they are the action that ended the sequence); the tokens a step
        committed after them are dropped.
        """
        stats, params = self.stats, self.params
        stats.steps += 1
        stats.drafted += verdict.num_drafted
        stats.accepted += verdict.num_accepted
        before = len(self.token_ids)
        for index, token in enumerate(verdict.tokens):
            self.token_ids.append(token)
            if self.logprobs is not None:
                self.logprobs.append(verdict.token_logprobs[index])
            if token in eos_ids and not params.ignore_eos:
                self.finish_reason = "stop"
                break
            if len(self.token_ids) >= params.max_new_tokens:
                self.finish_reason = "length"
                break
        self.text = tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if params.stop and first_stop(self.text, params.stop) is not None:
            self._cut_at_stop(before, tokenizer)
        stats.new_tokens = len(self.token_ids)

    def _cut_at_stop(self, before: int, tokenizer) -> None:
        """Keep the shortest token prefix (longer than ``before``, the tokens held before this
        step, whose text had no stop string) whose text holds a stop string; cut the text there."""
        for end in range(before + 1, len(self.token_ids) + 1):
            text = tokenizer.decode(self.token_ids[:end], skip_special_tokens=True)
            cut = first_stop(text, self.params.stop)
            if cut is not None:
                break
        del self.token_ids[end:]
        if self.logprobs is not None:
            del self.logprobs[end:]
        self.text = text[:cut]
        self.finish_reason = "stop"

    def finish(self, reason: str) -> None:
        self.finish_reason = self.finish_reason or reason
        self.stats.seconds += time.perf_counter()

    def publish(self) -> None:
        """Queue what is new since the last update, if this request is streamed."""
        if self.updates is None:
            return
        end = len(self.text)
        if not self.done:  # hold back a partial character and a possible stop-string prefix
            end = len(self.text.rstrip("\ufffd"))
            end -= max((len(s) - 1 for s in self.params.stop), default=0)
        end = max(end, self._sent_chars)
        if end == self._sent_chars and len(self.token_ids) == self._sent_tokens and not self.done:
            return
        update = RequestUpdate(
            self.text[self._sent_chars : end],
            self.token_ids[self._sent_tokens :],
            self.finish_reason,
            self.stats,
            len(self.prompt_ids),
            self.logprobs[self._sent_tokens :] if self.logprobs is not None else None,
        )
        self._sent_chars, self._sent_tokens = end, len(self.token_ids)
        self.updates.put_nowait(update)

    def result(self) -> GenerationResult:
        return GenerationResult(
            self.text,
            self.token_ids,
            self.finish_reason or "length",
            self.stats,
            self.logprobs,
            self.policy_version,
        )


def check_room(prompt_len: int, max_new_tokens: int, config) -> None:
    """Raise ValueError unless prompt + ``max_new_tokens`` + ``config.max_draft_nodes`` + 1 fit in
    ``config.max_model_len`` (an :class:`~actors.engine_config.EngineConfig`): the engine ends a
    request with ``length`` once one more tree might not fit, which a server accepts as how a
    request that outgrows the cache ends, and an RL rollout must not (``require_full_length``)."""
    need = prompt_len + max_new_tokens + config.max_draft_nodes + 1
    if need > config.max_model_len:
        raise ValueError(
            f"require_full_length: prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) + "
            f"max_draft_nodes ({config.max_draft_nodes}) + 1 = {need} tokens exceed "
            f"max_model_len={config.max_model_len}: raise engine.max_model_len or lower max_new_tokens"
        )


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest of ``stops`` starts in ``text``; None when none occurs."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None

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
    """One finished request."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string), "length" or "abort"
    stats: GenerationStats


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
    """

    text: str
    token_ids: list[int]
    finish_reason: str | None
    stats: GenerationStats
    prompt_tokens: int


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
    _sent_tokens: int = 0
    _sent_chars: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def start(self) -> None:
        self.stats.seconds = -time.perf_counter()

    def extend(self, verdict: Verdict, eos_ids: set[int], tokenizer) -> None:
        """Append a verdict's tokens, stopping at EOS, a stop string or the token limit."""
        stats, params = self.stats, self.params
        stats.steps += 1
        stats.drafted += verdict.num_drafted
        stats.accepted += verdict.num_accepted
        for token in verdict.tokens:
            self.token_ids.append(token)
            if token in eos_ids and not params.ignore_eos:
                self.finish_reason = "stop"
                break
            if len(self.token_ids) >= params.max_new_tokens:
                self.finish_reason = "length"
                break
        stats.new_tokens = len(self.token_ids)
        self.text = tokenizer.decode(self.token_ids, skip_special_tokens=True)
        for stop in params.stop:
            cut = self.text.find(stop)
            if cut >= 0:
                self.text = self.text[:cut]
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
        )
        self._sent_chars, self._sent_tokens = end, len(self.token_ids)
        self.updates.put_nowait(update)

    def result(self) -> GenerationResult:
        return GenerationResult(self.text, self.token_ids, self.finish_reason or "length", self.stats)

"""The OpenAI wire format: request schemas, response and stream-chunk bodies, error bodies.

Only the fields Tandem honours are accepted with meaning; unknown fields are ignored the way
OpenAI-compatible servers (vLLM) do, so existing clients work unchanged.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from actors.messages import SamplingParams
from actors.requests import GenerationStats


class OpenAIError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Sampling fields shared by both endpoints."""

    model: str
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_new_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(s for s in stop if s),
            ignore_eos=self.ignore_eos,
            seed=self.seed,
        )


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[int]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        if not prompt:
            raise ValueError("prompt is empty")
        return prompt


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, stats: GenerationStats) -> dict:
    """OpenAI usage counts plus Tandem's speculation figures."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": prompt_tokens + stats.new_tokens,
        "speculation": {
            "verifier_steps": stats.steps,
            "drafted_tokens": stats.drafted,
            "accepted_tokens": stats.accepted,
            "mean_accepted_tokens": round(stats.mean_accepted_tokens, 3),
        },
    }


def finish_reason(reason: str | None) -> str | None:
    return "length" if reason == "length" else ("stop" if reason else None)


def envelope(rid: str, obj: str, model: str, choices: list[dict], usage_counts: dict | None) -> dict:
    """What every OpenAI reply and stream chunk carries around its choices; ``usage`` only
    when given (a stream sends it once, in a last chunk without choices)."""
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices}
    if usage_counts:
        body["usage"] = usage_counts
    return body


def chat_body(rid: str, model: str, text: str, reason: str, usage_counts: dict) -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(reason)}
    return envelope(rid, "chat.completion", model, [choice], usage_counts)


def completion_body(rid: str, model: str, text: str, reason: str, usage_counts: dict) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}
    return envelope(rid, "text_completion", model, [choice], usage_counts)


def chat_chunk(rid: str, model: str, delta: dict, reason: str | None = None, usage_counts=None) -> str:
    choices = [] if usage_counts else [{"index": 0, "delta": delta, "finish_reason": finish_reason(reason)}]
    return sse(envelope(rid, "chat.completion.chunk", model, choices, usage_counts))


def completion_chunk(rid: str, model: str, text: str, reason: str | None = None, usage_counts=None) -> str:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}
    return sse(envelope(rid, "text_completion", model, [] if usage_counts else [choice], usage_counts))


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

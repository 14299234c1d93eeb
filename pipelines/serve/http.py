"""The HTTP face of the Serve app: OpenAI routes, API-key check, errors as OpenAI bodies, SSE.

Every failure a client can cause answers 4xx with ``{"error": {...}}`` and leaves the server
serving; a client that disconnects mid-stream cancels its generation in the verifier.
(No ``from __future__ import annotations`` here: FastAPI reads the routes' real types.)
"""

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

import pipelines.serve.openai_api as oa

log = logging.getLogger(__name__)

app = FastAPI(title="Tandem", description="Lossless speculative decoding, OpenAI-compatible")


@app.exception_handler(oa.OpenAIError)
async def _openai_error(_: Request, error: oa.OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    problem = error.errors()[0] if error.errors() else {}
    if problem.get("type") == "json_invalid":
        detail = problem.get("ctx", {}).get("error", "")
        return JSONResponse(oa.error_body(f"request body is not valid JSON: {detail}"), status_code=400)
    where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
    message = (
        f"{where}: {problem.get('msg', 'invalid request')}"
        if where
        else problem.get("msg", "invalid request")
    )
    return JSONResponse(oa.error_body(message, param=where or None), status_code=400)


def client_error(exc: BaseException) -> oa.OpenAIError:
    """Map an error raised in the verifier replica to what the client gets."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, ValueError):
        return oa.OpenAIError(400, str(cause))
    log.error("request failed: %s", exc)
    return oa.OpenAIError(500, f"internal error: {type(cause).__name__}", kind="server_error")


@serve.ingress(app)
class Ingress:
    """The ``Ingress`` deployment: FastAPI routes in front of the ``Verifier`` deployment."""

    def __init__(self, verifier, model_name: str, api_key: str, default_max_tokens: int):
        self.verifier = verifier
        self.model_name = model_name
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "tandem"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(self, body: oa.ChatCompletionRequest, request: Request):
        messages = [m.model_dump() for m in body.messages]
        return await self._generate(request, body, None, messages, chat=True)

    @app.post("/v1/completions")
    async def completions(self, body: oa.CompletionRequest, request: Request):
        return await self._generate(request, body, body.prompt, None, chat=False)

    def _authorize(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise oa.OpenAIError(
                401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key"
            )

    async def _generate(self, request: Request, body, prompt, messages, chat: bool):
        self._authorize(request)
        if body.model != self.model_name:
            raise oa.OpenAIError(
                404,
                f"model {body.model!r} does not exist; this server has {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        try:
            params = body.sampling(self.default_max_tokens)
        except ValueError as error:
            raise oa.OpenAIError(400, str(error)) from None
        updates = self.verifier.options(stream=True).stream_request.remote(prompt, messages, params)
        try:
            first = await updates.__anext__()
        except StopAsyncIteration:
            raise oa.OpenAIError(500, "the engine returned nothing", kind="server_error") from None
        except Exception as error:
            raise client_error(error) from None
        rid = oa.request_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(rid, first, updates, chat, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        return await self._collect(rid, first, updates, chat)

    async def _collect(self, rid: str, first, updates, chat: bool) -> dict:
        text, last = [first.text], first
        try:
            async for update in updates:
                text.append(update.text)
                last = update
        except Exception as error:
            raise client_error(error) from None
        make = oa.chat_body if chat else oa.completion_body
        return make(
            rid, self.model_name, "".join(text), last.finish_reason, oa.usage(last.prompt_tokens, last.stats)
        )

    async def _events(self, rid: str, first, updates, chat: bool, include_usage: bool):
        """SSE chunks; closing this generator (client gone) cancels the generation."""
        last = first
        try:
            if chat:
                yield oa.chat_chunk(rid, self.model_name, {"role": "assistant", "content": ""})
            yield self._chunk(rid, first, chat)
            if not first.finish_reason:
                async for update in updates:
                    last = update
                    yield self._chunk(rid, update, chat)
            if include_usage:
                counts = oa.usage(last.prompt_tokens, last.stats)
                make = oa.chat_chunk if chat else oa.completion_chunk
                yield make(rid, self.model_name, {} if chat else "", usage_counts=counts)
            yield oa.sse("[DONE]")
        except asyncio.CancelledError:
            log.info("client went away; cancelling %s", rid)
            raise
        except Exception as error:
            yield oa.sse(client_error(error).body())
        finally:
            if not last.finish_reason:
                updates.cancel()

    def _chunk(self, rid: str, update, chat: bool) -> str:
        if chat:
            delta = {"content": update.text} if update.text else {}
            return oa.chat_chunk(rid, self.model_name, delta, update.finish_reason)
        return oa.completion_chunk(rid, self.model_name, update.text, update.finish_reason)

"""The engine actor of a batch job: one :class:`Engine` (a verifier and a drafter) that turns a
batch of request rows into result rows. A plain class; Ray Data makes actors of it.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from actors.engine import Engine, EngineConfig, GenerationResult
from actors.messages import SamplingParams
from pipelines.batch.rows import id_type_of, result_schema


class EngineWorker:
    """A Ray Data callable class: builds its engine once, then generates batch after batch.

    Ray Data builds the class on the actor's main thread and calls it on a thread of its own. Torch
    work split over two threads ran 2x slower on the 2-core CPU of docs/benchmarks.md (each thread
    gets its own OpenMP team; batch 1 with ``ngram``: 14.2/10.7 tok/s on one thread, 6.9/7.7 after
    the other had run), so the engine is built and run on one thread the worker owns.

    Args:
        engine: the engine's settings (model, drafter, dtype, device, ...).
        defaults: sampling for rows without their own sampling columns.
        chat: wrap plain prompts in the model's chat template.
    """

    def __init__(self, engine: EngineConfig, defaults: SamplingParams, chat: bool):
        self._torch_thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.engine = self._torch_thread.submit(Engine, engine).result()
        self.defaults, self.chat = defaults, chat

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Request rows (``rows.request_schema``) → result rows (``rows.result_schema``), whose
        ids have the type of the requests' ids."""
        return self._torch_thread.submit(self._generate, batch).result()

    def _generate(self, batch: pa.Table) -> pa.Table:
        results = generate_rows(self.engine, batch.to_pylist(), self.defaults, self.chat)
        return pa.Table.from_pylist(results, schema=result_schema(id_type_of(batch.schema)))


def generate_rows(engine: Engine, requests: list[dict], defaults: SamplingParams, chat: bool) -> list[dict]:
    """Generate every valid request in one engine call; a bad request gets its error instead.

    Raises:
        Exception: whatever the engine raises for reasons other than a bad request (out of
            memory, a device fault); the task fails and Ray Data retries or stops the job.
    """
    results: list[dict | None] = [None] * len(requests)
    ready: list[tuple[int, list[int], SamplingParams]] = []
    for index, request in enumerate(requests):
        prompt_ids = None
        try:
            if request["error"]:
                raise ValueError(request["error"])
            prompt_ids = encode(engine, request, chat)
            check_room(engine, prompt_ids)
            ready.append((index, prompt_ids, sampling(request, defaults)))
        except ValueError as error:
            results[index] = failed(request, str(error), prompt_ids)
    for (index, prompt_ids, _), outcome in zip(ready, run(engine, ready)):
        request = requests[index]
        if isinstance(outcome, Exception):
            results[index] = failed(request, str(outcome), prompt_ids)
        else:
            results[index] = finished(request, prompt_ids, outcome)
    return results  # type: ignore[return-value]


def run(
    engine: Engine, ready: list[tuple[int, list[int], SamplingParams]]
) -> list[GenerationResult | ValueError]:
    """All ready requests in one engine call; if the engine refuses one of them (ValueError, raised
    before any decoding), each is retried alone so only the refused ones fail."""
    if not ready:
        return []
    try:
        return engine.generate([ids for _, ids, _ in ready], [params for _, _, params in ready])
    except ValueError:
        outcomes: list[GenerationResult | ValueError] = []
        for _, ids, params in ready:
            try:
                outcomes.extend(engine.generate([ids], params))
            except ValueError as error:
                outcomes.append(error)
        return outcomes


def encode(engine: Engine, request: dict, chat: bool) -> list[int]:
    """A request's prompt token ids: its messages through the chat template, or its prompt."""
    if request["messages"] is None:
        return engine.encode(request["prompt"], chat=chat)
    try:
        return engine.encode_chat(json.loads(request["messages"]))
    except Exception as error:  # the template's own checks (e.g. role order) raise any type
        raise ValueError(f"chat template rejected the messages: {error}") from None


def check_room(engine: Engine, prompt_ids: list[int]) -> None:
    """Refuse a prompt that leaves no room to generate (the engine's own rule)."""
    try:
        engine.check_prompt(prompt_ids)
    except ValueError as error:
        raise ValueError(f"prompt beyond the context: {error}") from None


def sampling(request: dict, defaults: SamplingParams) -> SamplingParams:
    """The job's sampling with the row's own values over it (checked by SamplingParams)."""
    if not request["sampling"]:
        return defaults
    overrides = json.loads(request["sampling"])
    if "stop" in overrides:
        overrides["stop"] = tuple(overrides["stop"])
    return dataclasses.replace(defaults, **overrides)


def finished(request: dict, prompt_ids: list[int], result: GenerationResult) -> dict:
    return {
        "shard": request["shard"],
        "row": request["row"],
        "id": request["id"],
        "prompt": request["prompt"],
        "text": result.text,
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": result.stats.new_tokens,
        "mean_accepted_tokens": result.stats.mean_accepted_tokens,
        "finish_reason": result.finish_reason,
        "error": None,
    }


def failed(request: dict, error: str, prompt_ids: list[int] | None) -> dict:
    return {
        "shard": request["shard"],
        "row": request["row"],
        "id": request["id"],
        "prompt": request["prompt"],
        "text": None,
        "prompt_tokens": None if prompt_ids is None else len(prompt_ids),
        "completion_tokens": 0,
        "mean_accepted_tokens": None,
        "finish_reason": None,
        "error": error,
    }

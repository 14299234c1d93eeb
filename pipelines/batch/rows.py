"""One input row → one request: its id, a plain prompt or chat messages, its sampling overrides,
or the reason it cannot be generated. Pure Python, so every bad-row rule is tested without Ray.

Between the stages of the Ray Data job a request travels as a row of :data:`REQUEST_SCHEMA`
(chat messages and sampling overrides JSON-encoded, so every block has the same Arrow schema).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyarrow as pa

# name → accepted Python types; None (or a missing column) keeps the job's default.
SAMPLING_COLUMNS: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "seed": (int,),
    "stop": (str, list),
}

REQUEST_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),  # output file name of the shard this row belongs to
        ("row", pa.int64()),  # row number in its input file
        ("id", pa.string()),
        ("prompt", pa.string()),  # the prompt as given; chat messages as JSON
        ("messages", pa.string()),  # JSON list of {role, content}, or null for a plain prompt
        ("sampling", pa.string()),  # JSON object of per-row sampling overrides
        ("error", pa.string()),  # why the row cannot be generated, or null
    ]
)


@dataclass(frozen=True)
class Columns:
    """Input column names (see ``BatchConfig``)."""

    id: str = "id"
    prompt: str = "prompt"
    messages: str = "messages"

    def wanted(self) -> list[str]:
        """Every column a reader should load when present."""
        return [self.id, self.prompt, self.messages, *SAMPLING_COLUMNS]


def parse_record(record: object, columns: Columns, shard: str, row: int, default_id: str) -> dict:
    """A request row (see :data:`REQUEST_SCHEMA`) from one input record (a dict, or anything a
    JSONL line held). Never raises: what is wrong with the record goes into ``error``."""
    request = {"shard": shard, "row": row, "id": default_id, "prompt": None, "messages": None}
    request |= {"sampling": None, "error": None}
    if not isinstance(record, dict):
        return request | {"error": f"row is not an object with a prompt: {type(record).__name__}"}
    if record.get(columns.id) is not None:
        request["id"] = str(record[columns.id])
    messages, prompt = record.get(columns.messages), record.get(columns.prompt)
    try:
        if messages is not None:
            request["prompt"] = json.dumps(messages, ensure_ascii=False, default=str)
            request["messages"] = json.dumps(check_messages(messages, columns.messages), ensure_ascii=False)
        elif prompt is not None:
            request["prompt"] = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
            request["prompt"] = check_prompt(prompt, columns.prompt)
        else:
            raise ValueError(
                f"missing prompt: the row has neither {columns.prompt!r} nor {columns.messages!r}"
            )
        overrides = sampling_overrides(record)
        request["sampling"] = json.dumps(overrides) if overrides else None
    except ValueError as error:
        request["error"] = str(error)
    return request


def check_prompt(prompt: object, column: str) -> str:
    """``prompt`` if it is a non-empty string."""
    if not isinstance(prompt, str):
        raise ValueError(f"{column} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{column} is empty")
    return prompt


def check_messages(messages: object, column: str) -> list[dict[str, str]]:
    """``messages`` as a list of ``{role, content}`` string pairs (other keys are dropped)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{column} must be a non-empty list of {{role, content}} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{column}[{index}] must be an object with role and content")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = type(message.get(key)).__name__
                raise ValueError(f"{column}[{index}].{key} must be a string, got {got}")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def sampling_overrides(record: dict) -> dict:
    """The row's own sampling values (types checked here; ranges when the request is built)."""
    overrides = {}
    for name, types in SAMPLING_COLUMNS.items():
        value = record.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # pandas writes a missing integer as NaN
        if int in types and float not in types and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{name} must be {expected}, got {type(value).__name__}")
        if name == "stop":
            value = [value] if isinstance(value, str) else value
            if not all(isinstance(item, str) for item in value):
                raise ValueError("stop must be a string or a list of strings")
        overrides[name] = value
    return overrides


def requests_table(requests: list[dict]) -> pa.Table:
    """Request rows as an Arrow table of :data:`REQUEST_SCHEMA`."""
    return pa.Table.from_pylist(requests, schema=REQUEST_SCHEMA)


OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("text", pa.string()),  # null when the row has an error
        ("prompt_tokens", pa.int64()),  # null when the prompt could not be tokenized
        ("completion_tokens", pa.int64()),
        ("mean_accepted_tokens", pa.float64()),  # tokens committed per verifier step
        ("finish_reason", pa.string()),  # "stop", "length", or null with an error
        ("error", pa.string()),
    ]
)

# What an engine actor returns: the output columns plus where each row goes.
RESULT_SCHEMA = pa.schema([REQUEST_SCHEMA.field("shard"), REQUEST_SCHEMA.field("row"), *OUTPUT_SCHEMA])

"""One input row → one request: its id, a plain prompt or chat messages, its sampling overrides,
or the reason it cannot be generated. Pure Python, so every bad-row rule is tested without Ray.

Between the stages of the Ray Data job a request travels as a row of :func:`request_schema`
(chat messages and sampling overrides JSON-encoded, so every block has the same Arrow schema).

Ids keep their type: the job reads the input's id column type once (``shards.input_id_type``),
and every schema of the job carries it, so an integer id comes out an integer and joins back to
its input row. Rows without an id get ``FILE:ROW`` when ids are strings and a null id when they
are integers (no string fits an integer column).
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

#: the job's id types (``Columns.id_type``) as Arrow types
ID_TYPES = {"string": pa.string(), "int": pa.int64()}
INT64 = range(-(2**63), 2**63)


def request_schema(id_type: str = "string") -> pa.Schema:
    """A request row between the job's stages, with ids of ``id_type`` (see :data:`ID_TYPES`)."""
    return pa.schema(
        [
            ("shard", pa.string()),  # output file name of the shard this row belongs to
            ("row", pa.int64()),  # row number in its input file
            ("id", ID_TYPES[id_type]),
            ("prompt", pa.string()),  # the prompt as given; chat messages as JSON
            ("messages", pa.string()),  # JSON list of {role, content}, or null for a plain prompt
            ("sampling", pa.string()),  # JSON object of per-row sampling overrides
            ("error", pa.string()),  # why the row cannot be generated, or null
        ]
    )


@dataclass(frozen=True)
class Columns:
    """Input column names (see ``BatchConfig``) and the type of the id column."""

    id: str = "id"
    prompt: str = "prompt"
    messages: str = "messages"
    #: the id column's type in this job's input, a key of :data:`ID_TYPES`
    id_type: str = "string"

    def wanted(self) -> list[str]:
        """Every column a reader should load when present."""
        return [self.id, self.prompt, self.messages, *SAMPLING_COLUMNS]


def parse_record(record: object, columns: Columns, shard: str, row: int, default_id: str) -> dict:
    """A request row (see :func:`request_schema`) from one input record (a dict, or anything a
    JSONL line held). Never raises: what is wrong with the record goes into ``error``.

    ``default_id`` (``FILE:ROW``) names a row without an id when ids are strings."""
    request = {"shard": shard, "row": row, "id": row_id(None, columns, default_id), "prompt": None}
    request |= {"messages": None, "sampling": None, "error": None}
    if not isinstance(record, dict):
        return request | {"error": f"row is not an object with a prompt: {type(record).__name__}"}
    try:
        request["id"] = row_id(record.get(columns.id), columns, default_id)
    except ValueError as error:
        request["error"] = str(error)  # the prompt is still read below, for the output row
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
        request["error"] = request["error"] or str(error)
    return request


def row_id(value: object, columns: Columns, default_id: str) -> str | int | None:
    """The row's id in the job's id type: ``str(value)`` for string ids (``default_id`` when the
    row has none); for integer ids the integer itself, or None when the row has none.

    Raises:
        ValueError: an integer job's row whose id is not an int64 integer.
    """
    if isinstance(value, float) and math.isnan(value):
        value = None  # pandas writes a missing value as NaN
    if columns.id_type == "string":
        return default_id if value is None else str(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in INT64:
        raise ValueError(
            f"{columns.id} must be a 64-bit integer like the input's other ids, got {value!r}"
        )
    return value


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


def requests_table(requests: list[dict], id_type: str = "string") -> pa.Table:
    """Request rows as an Arrow table of :func:`request_schema`."""
    return pa.Table.from_pylist(requests, schema=request_schema(id_type))


def output_schema(id_type: str = "string") -> pa.Schema:
    """The columns of an output file; ``id`` has the input's id type."""
    return pa.schema(
        [
            ("id", ID_TYPES[id_type]),
            ("prompt", pa.string()),
            ("text", pa.string()),  # null when the row has an error
            ("prompt_tokens", pa.int64()),  # null when the prompt could not be tokenized
            ("completion_tokens", pa.int64()),
            ("mean_accepted_tokens", pa.float64()),  # tokens committed per verifier step
            ("finish_reason", pa.string()),  # "stop", "length", or null with an error
            ("error", pa.string()),
        ]
    )


def result_schema(id_type: str = "string") -> pa.Schema:
    """What an engine actor returns: the output columns plus where each row goes."""
    request = request_schema(id_type)
    return pa.schema([request.field("shard"), request.field("row"), *output_schema(id_type)])


def id_type_of(schema: pa.Schema) -> str:
    """The id type (a key of :data:`ID_TYPES`) of a request or result table's schema."""
    arrow = schema.field("id").type
    return next(name for name, known in ID_TYPES.items() if known == arrow)

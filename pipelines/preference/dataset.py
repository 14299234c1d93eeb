"""A preference dataset → token-id pairs: Parquet or JSONL, local or ``s3://``, one row per pair.

Columns: ``prompt`` (a string, or chat turns) or ``messages`` (chat turns ``{role, content}``),
``chosen`` and ``rejected`` (strings, or TRL's conversational form: a list of one assistant
message). The prompt goes through the model's chat template with the generation prompt; each
completion is its text's tokens plus EOS (as TRL's ``DPOTrainer`` appends it). A bad row is
reported with its row number (counted from 0 over the files in sorted order) and the reason, and
left out; the others are used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.models import encode_chat
from actors.trainers.preference.pairs import Pair
from pipelines.common.storage import StoreConfig, list_files, resolve
from pipelines.preference.config import DataConfig


@dataclass
class BadRow:
    """A row left out, and why."""

    row: int
    file: str
    reason: str

    def to_dict(self) -> dict:
        return {"row": self.row, "file": self.file, "reason": self.reason}


def file_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise ValueError(f"cannot tell the format of {path} from its suffix: set data.format")


def read_rows(fs: pafs.FileSystem, path: str, fmt: str) -> list[object]:
    """Every row of one file as Python values; a JSONL line that is not JSON becomes a
    :class:`ValueError` in its place (so row numbers stay those of the file)."""
    if fmt == "parquet":
        with fs.open_input_file(path) as handle:
            return pq.read_table(handle).to_pylist()
    with fs.open_input_stream(path) as stream:
        lines = stream.read().decode("utf-8").splitlines()
    rows: list[object] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            rows.append(ValueError(f"not valid JSON ({error.msg})"))
    return rows


def check_messages(messages: object, column: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{column} must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{column}[{i}] must be a {{role, content}} message")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"{column}[{i}].{key} must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def prompt_messages(record: dict) -> list[dict]:
    """The prompt's chat turns: ``prompt`` (text or turns), else ``messages``."""
    prompt = record.get("prompt")
    if prompt is None:
        if record.get("messages") is None:
            raise ValueError("missing column 'prompt' (or 'messages')")
        return check_messages(record["messages"], "messages")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("empty prompt")
        return [{"role": "user", "content": prompt}]
    return check_messages(prompt, "prompt")


def completion_text(record: dict, column: str) -> str:
    """``chosen`` / ``rejected`` as text: a string, or a list of one assistant message."""
    value = record.get(column)
    if value is None:
        raise ValueError(f"missing column {column!r}")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
            raise ValueError(f"{column} must be one assistant message with string content")
        value = value[0]["content"]
    if not isinstance(value, str):
        raise ValueError(
            f"{column} must be a string (or a list of one assistant message), got {type(value).__name__}"
        )
    if not value.strip():
        raise ValueError(f"empty {column}")
    return value


def parse_row(record: object, tokenizer, max_length: int, number: int) -> Pair:
    """One row → a :class:`Pair`, or ValueError with the reason."""
    if isinstance(record, ValueError):
        raise record
    if not isinstance(record, dict):
        raise ValueError(
            f"a row must be an object with prompt/messages, chosen, rejected; got {type(record).__name__}"
        )
    messages = prompt_messages(record)
    chosen, rejected = completion_text(record, "chosen"), completion_text(record, "rejected")
    if chosen == rejected:
        raise ValueError("chosen and rejected are the same: nothing to prefer")
    prompt_ids = encode_chat(tokenizer, messages)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    chosen_ids = tokenizer.encode(chosen, add_special_tokens=False) + eos
    rejected_ids = tokenizer.encode(rejected, add_special_tokens=False) + eos
    length = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
    if length > max_length:
        raise ValueError(f"{length} tokens, longer than data.max_length={max_length}")
    return Pair(prompt_ids, chosen_ids, rejected_ids, "dataset", number)


def load_pairs(data: DataConfig, store: StoreConfig, tokenizer) -> tuple[list[Pair], list[BadRow], int]:
    """Every good row of ``data.dataset`` as a pair, the bad rows, and the number of rows read."""
    fs, path = resolve(data.dataset, store)
    _, files = list_files(fs, path)
    pairs, bad, number = [], [], 0
    for file in files:
        for record in read_rows(fs, file, file_format(file, data.format)):
            try:
                pairs.append(parse_row(record, tokenizer, data.max_length, number))
            except ValueError as error:
                bad.append(BadRow(number, file, str(error)))
            number += 1
    return pairs, bad, number

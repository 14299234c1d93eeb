"""A preference dataset → token-id pairs: Parquet or JSONL, local or ``s3://``, one row per pair,
read and checked in a Ray Data stage.

Columns: ``prompt`` (a string, or chat turns) or ``messages`` (chat turns ``{role, content}``),
``chosen`` and ``rejected`` (strings, or TRL's conversational form: a list of one assistant
message). The prompt goes through the model's chat template with the generation prompt; each
completion is its text's tokens plus EOS (as TRL's ``DPOTrainer`` appends it). A bad row is
reported with its row number (counted from 0 over the files in sorted order) and the reason, and
left out; the others are used.

The stage: ``ray.data.read_parquet`` for Parquet files and ``ray.data.read_text`` for JSONL
(a line at a time, so a line that is not JSON, or a column whose type changes from row to row,
is one bad row: ``read_json``'s Arrow reader fails the whole file on either), both on the
pyarrow filesystem of :func:`~pipelines.common.storage.resolve` and with each row's file
(``include_paths``); then ``map_batches`` checks and tokenizes every row in Ray tasks. The
stage keeps the order of rows (``preserve_order``), so the driver numbers them file by file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
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


def parse_line(line: str) -> object:
    """A JSONL line's record, or a :class:`ValueError` in its place (its row is bad)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        return ValueError(f"not valid JSON ({error.msg})")


#: the column Ray Data adds with each row's file (``include_paths``)
PATH = "path"
CHECKED = pa.schema([(PATH, pa.string()), ("pair", pa.string()), ("reason", pa.string())])
#: CPUs a read-and-check task reserves: little, so it never waits behind the engine actors
STAGE_CPUS = 0.5


def check_batch(batch: pa.Table, tokenizer, max_length: int, lines: bool) -> pa.Table:
    """A Ray Data batch of rows (``lines``: JSONL lines in a ``text`` column) → per row, its
    file, the pair's token ids as JSON ``[prompt, chosen, rejected]`` or the reason it is bad."""
    paths, pairs, reasons = [], [], []
    for record in batch.to_pylist():
        paths.append(record.pop(PATH))
        if lines:
            record = parse_line(record["text"])
        try:
            pair = parse_row(record, tokenizer, max_length, 0)
        except ValueError as error:
            pairs.append(None)
            reasons.append(str(error))
            continue
        pairs.append(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]))
        reasons.append(None)
    return pa.table([paths, pairs, reasons], schema=CHECKED)


@contextlib.contextmanager
def rows_in_order() -> Iterator[None]:
    """Ray Data keeps the order of rows (and blocks) for the body of the ``with``."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = before


def checked_rows(files: list[str], fs: pafs.FileSystem, data: DataConfig, tokenizer) -> list[dict]:
    """The Ray Data stage: every row of ``files`` read and checked in Ray tasks, in row order
    within each file (rows of :data:`CHECKED`)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        # The cluster in RAY_ADDRESS (`ray job submit` sets it), else a fresh local Ray.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    formats = {file: file_format(file, data.format) for file in files}
    # every file as named, whatever its suffix; no Hive partition columns from the folder names
    read = {"filesystem": fs, "include_paths": True, "partitioning": None, "file_extensions": None}
    read["num_cpus"] = STAGE_CPUS

    def checked(rows, lines: bool):
        kwargs = {"tokenizer": tokenizer, "max_length": data.max_length, "lines": lines}
        return rows.map_batches(check_batch, batch_format="pyarrow", num_cpus=STAGE_CPUS, fn_kwargs=kwargs)

    parquet = [file for file in files if formats[file] == "parquet"]
    jsonl = [file for file in files if formats[file] == "jsonl"]
    with rows_in_order():  # a dataset keeps the context it was made in
        stages = [
            checked(ray.data.read_parquet(group, **read), lines=False) for group in by_schema(fs, parquet)
        ]
        if jsonl:
            text = ray.data.read_text(jsonl, encoding="utf-8", drop_empty_lines=True, **read)
            stages.append(checked(text, lines=True))
        rows = stages[0].union(*stages[1:]) if len(stages) > 1 else stages[0]
        return rows.take_all()


def by_schema(fs: pafs.FileSystem, files: list[str]) -> list[list[str]]:
    """``files`` (Parquet) grouped by their Arrow schema, read from the footers: one
    ``read_parquet`` unifies its files' schemas and fails on a column whose type differs between
    them, where each file alone would give its rows (good or bad) as before."""
    groups: dict[pa.Schema, list[str]] = {}
    for file in files:
        with fs.open_input_file(file) as handle:
            groups.setdefault(pq.ParquetFile(handle).schema_arrow, []).append(file)
    return list(groups.values())


def load_pairs(data: DataConfig, store: StoreConfig, tokenizer) -> tuple[list[Pair], list[BadRow], int]:
    """Every good row of ``data.dataset`` as a pair, the bad rows, and the number of rows read."""
    fs, path = resolve(data.dataset, store)
    _, files = list_files(fs, path)
    by_file: dict[str, list[dict]] = {file: [] for file in files}
    for row in checked_rows(files, fs, data, tokenizer):
        if row[PATH] not in by_file:
            raise RuntimeError(f"Ray Data read a row of {row[PATH]}, not one of the dataset's files {files}")
        by_file[row[PATH]].append(row)
    pairs, bad, number = [], [], 0
    for file in files:
        for row in by_file[file]:
            if row["reason"] is None:
                pairs.append(Pair(*json.loads(row["pair"]), "dataset", number))
            else:
                bad.append(BadRow(number, file, row["reason"]))
            number += 1
    return pairs, bad, number

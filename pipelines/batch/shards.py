"""Shards: the input cut into row ranges, each generated into one output file of a fixed name.

A shard is the unit of resumption. Its output name depends only on its input file and first
row, so a re-run finds which shards are done by listing the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.batch.rows import Columns, parse_record

T = TypeVar("T")

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
CHUNK = 1 << 20


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one input file.

    Attributes:
        name: the output file name.
        path: the input file, as a path in its filesystem.
        label: the input file relative to the input folder; generated ids are ``LABEL:ROW``.
        format: ``parquet`` or ``jsonl``.
        start: first row (JSONL: blank lines are not rows).
        stop: one past the last row.
        offset: byte offset of row ``start`` (JSONL), so a reader seeks instead of scanning.
    """

    name: str
    path: str
    label: str
    format: str
    start: int
    stop: int
    offset: int = 0

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)


def detect_format(path: str, configured: str) -> str:
    """``configured`` unless ``auto``; then the format the file's suffix says."""
    if configured != "auto":
        return configured
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot tell the format of {path}: set batch.format=parquet or jsonl")
    return SUFFIXES[suffix]


def shard_name(path: str, label: str, start: int) -> str:
    """``part-STEM-HASH-START.parquet``: readable, unique per input file, sortable by row."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(label))[0])[:40]
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    return f"part-{stem}-{digest}-{start:010d}.parquet"


def plan(fs: pafs.FileSystem, folder: str, files: list[str], fmt: str, rows_per_shard: int) -> list[Shard]:
    """Every shard of ``files`` (row counts read in parallel: Parquet footers, JSONL scans)."""

    def file_shards(path: str) -> list[Shard]:
        kind = detect_format(path, fmt)
        label = os.path.relpath(path, folder) if folder else path
        if kind == "parquet":
            with fs.open_input_file(path) as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
            offsets = [0] * len(range(0, rows, rows_per_shard))
        else:
            rows, offsets = scan_jsonl(fs, path, rows_per_shard)
        return [
            Shard(
                shard_name(path, label, start),
                path,
                label,
                kind,
                start,
                min(start + rows_per_shard, rows),
                offset,
            )
            for start, offset in zip(range(0, rows, rows_per_shard), offsets)
        ]

    return [shard for shards in per_file(file_shards, files) for shard in shards]


def per_file(read: Callable[[str], T], files: list[str]) -> list[T]:
    """``read`` of every file, in order, 16 at a time: an object store answers each file's
    request in about the same time whatever its size."""
    with ThreadPoolExecutor(max_workers=min(16, len(files) or 1)) as pool:
        return list(pool.map(read, files))


def input_id_type(fs: pafs.FileSystem, shards: list[Shard], column: str) -> str:
    """The type of the input's id column, ``int`` or ``string`` (``rows.ID_TYPES``): ``int`` when
    the files that have the column hold integers, ``string`` when they hold anything else or
    no file has it.

    Raises:
        ValueError: some files hold integer ids and others not (an output column has one type).
    """
    formats = {shard.path: shard.format for shard in shards}
    found = per_file(lambda path: file_id_type(fs, path, formats[path], column), list(formats))
    example = {kind: path for path, kind in zip(formats, found) if kind is not None}
    if len(example) > 1:
        raise ValueError(
            f"the input's {column!r} columns differ in type: {example['int']} holds integers, "
            f"{example['string']} other values; give every file ids of one type"
        )
    return next(iter(example), "string")


def file_id_type(fs: pafs.FileSystem, path: str, fmt: str, column: str) -> str | None:
    """``int`` or ``string`` for the id column of one file, None when it has none: a Parquet
    file's column type, or the type of the id in a JSONL file's first row (JSONL has no schema,
    and reading every row twice would double the driver's reading)."""
    if fmt == "parquet":
        with fs.open_input_file(path) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        arrow = schema.field(column).type if column in schema.names else pa.null()
        return None if pa.types.is_null(arrow) else "int" if pa.types.is_integer(arrow) else "string"
    first = first_jsonl_record(fs, path)
    value = first.get(column) if isinstance(first, dict) else None
    if value is None:
        return None
    return "int" if isinstance(value, int) and not isinstance(value, bool) else "string"


def first_jsonl_record(fs: pafs.FileSystem, path: str) -> object:
    """The first non-blank line of a JSONL file, parsed (None if there is none or it is not JSON)."""
    with fs.open_input_stream(path) as handle:
        for _, line in lines(handle):
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def lines(handle, position: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` for each line read from ``handle``, which starts at ``position``."""
    pending = b""
    while data := handle.read(CHUNK):
        *complete, pending = (pending + data).split(b"\n")
        for line in complete:
            yield position, line
            position += len(line) + 1
    if pending:
        yield position, pending


def scan_jsonl(fs: pafs.FileSystem, path: str, rows_per_shard: int) -> tuple[int, list[int]]:
    """A JSONL file's row count (non-blank lines) and the byte offset of each shard's first row."""
    rows, offsets = 0, []
    with fs.open_input_stream(path) as handle:
        for offset, line in lines(handle):
            if not line.strip():
                continue
            if rows % rows_per_shard == 0:
                offsets.append(offset)
            rows += 1
    return rows, offsets


def read_records(fs: pafs.FileSystem, shard: Shard, columns: Columns) -> Iterator[object]:
    """The raw records of a shard, in row order (a JSONL line that is not JSON yields a
    :class:`BadLine`)."""
    if shard.format == "parquet":
        yield from read_parquet(fs, shard, columns)
        return
    with fs.open_input_file(shard.path) as handle:
        handle.seek(shard.offset)
        count = 0
        for _, line in lines(handle, shard.offset):
            if count == shard.rows:
                break
            if not line.strip():
                continue
            count += 1
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                yield BadLine(f"not valid JSON: {error.msg} (column {error.colno})")


def read_parquet(fs: pafs.FileSystem, shard: Shard, columns: Columns) -> list[dict]:
    """Rows ``[start, stop)`` of a Parquet file: only the row groups that hold them are read."""
    with fs.open_input_file(shard.path) as handle:
        parquet = pq.ParquetFile(handle)
        present = [name for name in columns.wanted() if name in parquet.schema_arrow.names]
        groups, first, skip = [], 0, None
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if first < shard.stop and first + size > shard.start:
                skip = shard.start - first if skip is None else skip
                groups.append(group)
            first += size
        table = parquet.read_row_groups(groups, columns=present)
    return table.slice(skip or 0, shard.rows).to_pylist()


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that could not be parsed."""

    reason: str


def read_requests(fs: pafs.FileSystem, shard: Shard, columns: Columns) -> list[dict]:
    """The request rows of a shard (see ``rows.request_schema``); bad rows carry their error."""
    requests = []
    for row, record in enumerate(read_records(fs, shard, columns), start=shard.start):
        request = parse_record(record, columns, shard.name, row, f"{shard.label}:{row}")
        if isinstance(record, BadLine):
            request["error"] = record.reason
        requests.append(request)
    if len(requests) != shard.rows:
        raise RuntimeError(
            f"{shard.path} changed while the job ran: expected {shard.rows} rows, read {len(requests)}"
        )
    return requests

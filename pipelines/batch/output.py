"""The output folder of a batch job: one Parquet file per finished shard, a manifest that pins the
settings the files were made with, and a ``_SUCCESS`` marker once every shard is written.

Exactly-once rows: a shard's file is written in one atomic step after all of its rows are in,
duplicates from retried work are dropped by row number, and a shard whose file exists is never
generated again.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.batch.rows import output_schema
from pipelines.batch.shards import Shard
from pipelines.common.storage import list_names, read_bytes, write_atomic

log = logging.getLogger(__name__)

MANIFEST = "_tandem_manifest.json"
SUCCESS = "_SUCCESS"
#: settings a manifest gained later, with the value the outputs written before them have
EARLIER_SETTINGS = {"id_type": "string"}


class Output:
    """An output folder (local or in an object store) whose files hold ids of ``id_type`` (the
    input's: ``rows.ID_TYPES``)."""

    def __init__(self, fs: pafs.FileSystem, folder: str, id_type: str = "string"):
        self.fs, self.folder, self.id_type = fs, folder, id_type

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def done(self) -> set[str]:
        """Names of the shard files already written."""
        return {name for name in list_names(self.fs, self.folder) if name.endswith(".parquet")}

    def pin(self, settings: dict, shards: list[Shard]) -> None:
        """Record ``settings`` and the input's row counts, or check them against an earlier run's.

        Raises:
            ValueError: the folder holds output made with other settings or from other input rows
                (resuming would mix them or overlap shards), naming what differs.
        """
        files: dict[str, int] = {}
        for shard in shards:
            files[shard.path] = max(files.get(shard.path, 0), shard.stop)
        earlier = read_bytes(self.fs, self.path(MANIFEST))
        if earlier is not None:
            recorded = json.loads(earlier)
            started = EARLIER_SETTINGS | recorded["settings"]
            changed = [key for key in settings if started.get(key) != settings[key]]
            if changed:
                was = ", ".join(f"{key}={started.get(key)!r}" for key in changed)
                now = ", ".join(f"{key}={settings[key]!r}" for key in changed)
                raise ValueError(
                    f"output {self.folder} was started with {was}; this run has {now}: "
                    "use the same settings to resume, or a new output"
                )
            for path, rows in recorded["files"].items():
                if path in files and files[path] != rows:
                    raise ValueError(
                        f"input {path} had {rows} rows when output {self.folder} was started, "
                        f"now {files[path]}"
                    )
            files = recorded["files"] | files
        manifest = {"settings": settings, "files": files}
        write_atomic(self.fs, self.path(MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())

    def write_shard(self, name: str, rows: list[dict]) -> None:
        """Write a shard's rows (in row order) as one Parquet file, atomically."""
        table = pa.Table.from_pylist(rows, schema=output_schema(self.id_type))
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        write_atomic(self.fs, self.path(name), buffer.getvalue())

    def mark_success(self) -> None:
        """Mark the folder complete (every shard of the input written)."""
        write_atomic(self.fs, self.path(SUCCESS), b"")

    def unmark_success(self) -> None:
        """Remove the completion marker while shards are missing (e.g. new input files)."""
        if self.fs.get_file_info(self.path(SUCCESS)).type == pafs.FileType.File:
            self.fs.delete_file(self.path(SUCCESS))


class ShardCollector:
    """Gathers an engine pool's results, which arrive in any order, and writes each shard as soon
    as all of its rows are in."""

    def __init__(self, output: Output, shards: list[Shard]):
        self.output = output
        self.expected = {shard.name: shard.rows for shard in shards}
        self.pending: dict[str, dict[int, dict]] = {name: {} for name in self.expected}
        self.duplicates = 0
        self.written: list[str] = []

    def add(self, table: pa.Table) -> None:
        """Take a batch of result rows (``rows.result_schema``); write the shards it completes."""
        touched = set()
        for result in table.to_pylist():
            name, row = result.pop("shard"), result.pop("row")
            rows = self.pending[name]
            if row in rows:
                self.duplicates += 1  # retried work: the first copy stands
                continue
            rows[row] = result
            touched.add(name)
        for name in sorted(touched):
            if len(self.pending[name]) == self.expected[name]:
                rows = self.pending.pop(name)
                self.output.write_shard(name, [rows[row] for row in sorted(rows)])
                self.written.append(name)
                log.info("wrote %s (%d rows)", self.output.path(name), len(rows))

    def finish(self) -> None:
        """Check that every shard was written.

        Raises:
            RuntimeError: some shards lack rows (they stay unwritten; a re-run generates them).
        """
        if self.duplicates:
            log.warning("dropped %d duplicate rows from retried work", self.duplicates)
        if self.pending:
            missing = {name: self.expected[name] - len(rows) for name, rows in self.pending.items()}
            raise RuntimeError(f"shards left incomplete (missing rows): {missing}")

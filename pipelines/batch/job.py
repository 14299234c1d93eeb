"""The batch generation job on Ray Data: plan shards → skip the finished ones → read the rest in
Ray tasks → generate in a pool of engine actors → write each shard as it completes → summary.

The driver writes the output files (one atomic write per shard), so what is in the output
folder is always whole shards; a job that dies is resumed by running it again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.batch.config import BatchJobConfig
from pipelines.batch.output import Output, ShardCollector
from pipelines.batch.rows import Columns, requests_table
from pipelines.batch.shards import Shard, input_id_type, plan, read_requests
from pipelines.batch.worker import EngineWorker
from pipelines.common.storage import StoreConfig, list_files, resolve

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What one run of a batch job did.

    Attributes:
        shards: shards of the whole input.
        skipped: shards already written by an earlier run.
        written: shards this run wrote.
        rows: rows this run wrote.
        errors: rows this run wrote with an error.
        completion_tokens: tokens this run generated.
        seconds: wall time of this run, from planning to the last file.
    """

    shards: int = 0
    skipped: int = 0
    written: int = 0
    rows: int = 0
    errors: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"[tandem] {self.rows} rows ({self.errors} errors) in {self.seconds:.1f} s = "
            f"{self.rows_per_s:.2f} rows/s, {self.completion_tokens} tokens = "
            f"{self.tokens_per_s:.1f} tok/s | "
            f"shards: {self.written} written, {self.skipped} already done, {self.shards} in all"
        )


def settings(cfg: BatchJobConfig, columns: Columns) -> dict:
    """What an output's rows depend on; a resumed run must match it. The drafter is not in it:
    speculation is lossless, so any drafter gives the same rows."""
    engine, params = cfg.engine, cfg.sampling()
    return {
        "model": engine.model,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "chat": cfg.chat,
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": list(params.stop),
        "rows_per_shard": cfg.batch.rows_per_shard,
        "columns": [columns.id, columns.prompt, columns.messages],
        "id_type": columns.id_type,
    }


def run(cfg: BatchJobConfig) -> Summary:
    """Generate ``cfg.input`` into ``cfg.output``; print and return the summary."""
    start = time.perf_counter()
    cfg.sampling()  # bad defaults stop the job before anything starts
    out_fs, out_path = resolve(cfg.output, cfg.s3)
    shards = input_shards(cfg, out_path)
    columns = input_columns(cfg, shards)
    output = Output(out_fs, out_path, columns.id_type)
    output.pin(settings(cfg, columns), shards)
    done = output.done()
    pending = [shard for shard in shards if shard.name not in done]
    summary = Summary(shards=len(shards), skipped=len(shards) - len(pending))
    log.info("%s: %d shards, %d already done", cfg.input, len(shards), summary.skipped)
    if pending:
        output.unmark_success()
        collector = ShardCollector(output, pending)
        for batch in dataset(cfg, pending, columns).iter_batches(batch_size=None, batch_format="pyarrow"):
            collector.add(batch)
            count(summary, batch)
        collector.finish()
        summary.written = len(collector.written)
    if summary.skipped + summary.written == summary.shards:
        output.mark_success()
    summary.seconds = time.perf_counter() - start
    print(summary.line(), flush=True)
    return summary


def input_shards(cfg: BatchJobConfig, out_path: str) -> list[Shard]:
    """The shards of ``cfg.input``, leaving out the files of an output folder nested inside it."""
    in_fs, in_path = resolve(cfg.input, cfg.s3)
    folder, files = list_files(in_fs, in_path)
    files = [path for path in files if not path.startswith(out_path + "/")]
    if not files:
        raise FileNotFoundError(f"no input files at {cfg.input} outside the output folder")
    return plan(in_fs, folder, files, cfg.batch.format, cfg.batch.rows_per_shard)


def input_columns(cfg: BatchJobConfig, shards: list[Shard]) -> Columns:
    """The input's column names, and its id column's type read from the files of ``shards``
    (the whole input, so that every run on it writes ids of one type)."""
    fs, _ = resolve(cfg.input, cfg.s3)
    batch = cfg.batch
    id_type = input_id_type(fs, shards, batch.id_column)
    return Columns(batch.id_column, batch.prompt_column, batch.messages_column, id_type)


def count(summary: Summary, batch: pa.Table) -> None:
    summary.rows += batch.num_rows
    summary.errors += batch.num_rows - batch["error"].null_count
    summary.completion_tokens += pc.sum(batch["completion_tokens"]).as_py() or 0


def dataset(cfg: BatchJobConfig, pending: list[Shard], columns: Columns):
    """The Ray Data pipeline over ``pending``: one read task per shard, then the engine pool."""
    import ray
    import ray.data

    if not ray.is_initialized():
        # The cluster in RAY_ADDRESS (`ray job submit` sets it), else a fresh local Ray: never
        # attach to another local cluster by accident.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    batch = cfg.batch
    shards = ray.data.from_items([shard.to_dict() for shard in pending], override_num_blocks=len(pending))
    requests = shards.map_batches(
        read_shards,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"source": cfg.input, "store": cfg.s3, "columns": columns},
        num_cpus=0.5,  # I/O bound: leave the cores to the engine actors
    )
    pool = ray.data.ActorPoolStrategy(
        min_size=batch.min_actors,
        max_size=batch.max_actors,
        max_tasks_in_flight_per_actor=batch.tasks_per_actor,
    )
    actor_options = {"accelerator_type": batch.accelerator_type or None, "resources": batch.resources or None}
    return requests.map_batches(
        EngineWorker,
        batch_size=batch.batch_size,
        batch_format="pyarrow",
        compute=pool,
        fn_constructor_kwargs={"engine": cfg.engine, "defaults": cfg.sampling(), "chat": cfg.chat},
        num_cpus=batch.num_cpus,
        num_gpus=batch.num_gpus,
        **{key: value for key, value in actor_options.items() if value},
    )


def read_shards(items: pa.Table, source: str, store: StoreConfig, columns: Columns) -> pa.Table:
    """A Ray task: the request rows of the shards described in ``items``, read from the
    filesystem of the job's input URI ``source``."""
    fs, _ = resolve(source, store)
    requests = []
    for item in items.to_pylist():
        requests.extend(read_requests(fs, Shard(**item), columns))
    return requests_table(requests, columns.id_type)

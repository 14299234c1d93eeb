"""The data stage of distillation: prompts → Ray Data ``map_batches`` over verifier actors →
training rows (prompt + response, the verifier's top-k at every response position) as Parquet
in the run's storage.

The rows are written once per data setting: a re-run (a resumed job) finds them, with the
settings they were made with, and goes straight to training.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.engine import EngineConfig
from actors.trainers.students import StudentConfig
from actors.trainers.teacher import TeacherConfig, TeacherWorker
from pipelines.common.storage import list_files, read_bytes, resolve, write_atomic
from pipelines.distill.config import DistillConfig

log = logging.getLogger(__name__)

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("start", pa.int32()),
        ("topk_ids", pa.list_(pa.list_(pa.int32()))),
        ("topk_probs", pa.list_(pa.list_(pa.float32()))),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)
DONE, SETTINGS = "_SUCCESS", "_settings.json"


def prompt_of(record: object, column: str) -> str | None:
    """A record's prompt: ``column``, the first of ``turns``, or the last user ``messages`` entry."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get(column), str):
        return record[column]
    turns = record.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]
    messages = record.get("messages")
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def read_records(fs: pafs.FileSystem, path: str) -> list:
    """Every record of one JSONL (optionally .gz) or Parquet file."""
    data = read_bytes(fs, path) or b""
    if path.endswith((".parquet", ".pq")):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def load_prompts(cfg: DistillConfig) -> list[dict]:
    """Prompt rows ``{id, prompt, split}``: the first ``data.eval_prompts`` are ``val``."""
    data = cfg.data
    if data.prompts == "humaneval":
        from pipelines.common.prompts import load_prompts as bundled

        texts = [(f"humaneval/{i}", text) for i, text in enumerate(bundled("humaneval", data.limit or 10**9))]
    else:
        fs, path = resolve(data.prompts, cfg.s3)
        texts = []
        for file in list_files(fs, path)[1]:
            for number, record in enumerate(read_records(fs, file)):
                text = prompt_of(record, data.prompt_column)
                if text and text.strip():
                    texts.append((f"{file}:{number}", text))
        texts = texts[: data.limit or None]
    if len(texts) <= data.eval_prompts:
        raise ValueError(f"{data.prompts}: {len(texts)} prompts, not more than data.eval_prompts")
    return [
        {"id": key, "prompt": text, "split": "val" if i < data.eval_prompts else "train"}
        for i, (key, text) in enumerate(texts)
    ]


class TeacherActor:
    """A Ray Data callable class around :class:`TeacherWorker` (Arrow tables in and out)."""

    def __init__(self, engine: EngineConfig, teacher: TeacherConfig, student: StudentConfig | None):
        self.worker = TeacherWorker(engine, teacher, student)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(self.worker(batch.to_pylist()), schema=ROW_SCHEMA)


def data_settings(cfg: DistillConfig) -> dict:
    """What the rows depend on; rows made with other settings are never reused."""
    settings = {
        "verifier": cfg.engine.model,
        "dtype": cfg.engine.dtype,
        "data": dataclasses.asdict(cfg.data) | {"reuse": None, "actors": None, "batch_size": None},
        "teacher": dataclasses.asdict(cfg.teacher),
    }
    if cfg.teacher.lmbda > 0:
        settings["student"] = dataclasses.asdict(cfg.student)
    return json.loads(json.dumps(settings))


def make_rows(cfg: DistillConfig, fs: pafs.FileSystem, folder: str) -> int:
    """Write the training rows into ``folder`` unless rows made with the same settings are there;
    returns how many rows were written (0 when reused)."""
    settings = data_settings(cfg)
    found = read_bytes(fs, f"{folder}/{DONE}")
    if found is not None and cfg.data.reuse:
        made_with = json.loads(read_bytes(fs, f"{folder}/{SETTINGS}") or b"{}")
        if made_with != settings:
            raise ValueError(
                f"the rows in {folder} were made with other data/teacher settings; "
                "choose another name= or set data.reuse=false to remake them"
            )
        log.info("reusing the training rows in %s", folder)
        return 0
    rows = run_teacher(cfg, load_prompts(cfg))
    rows.write_parquet(folder, filesystem=fs, mode="overwrite")
    write_atomic(fs, f"{folder}/{SETTINGS}", json.dumps(settings, indent=1).encode())
    write_atomic(fs, f"{folder}/{DONE}", b"")
    return rows.count()


def run_teacher(cfg: DistillConfig, prompts: list[dict]):
    """The Ray Data pipeline: prompt rows → verifier actors → a materialized dataset of rows."""
    import ray.data

    data = cfg.data
    dataset = ray.data.from_items(prompts, override_num_blocks=max(1, len(prompts) // data.batch_size))
    student = cfg.student if cfg.teacher.lmbda > 0 else None
    rows = dataset.map_batches(
        TeacherActor,
        batch_size=data.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=data.actors),
        fn_constructor_kwargs={"engine": cfg.engine, "teacher": cfg.teacher, "student": student},
        num_cpus=data.num_cpus,
        num_gpus=data.num_gpus,
    )
    return rows.materialize()


def data_location(cfg: DistillConfig) -> tuple[pafs.FileSystem, str]:
    """The filesystem and folder of this run's training rows."""
    fs, root = resolve(cfg.storage_path, cfg.s3)
    return fs, f"{root}/{cfg.name}/data"

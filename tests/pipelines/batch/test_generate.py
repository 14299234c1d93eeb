"""Batch generation: bad rows get an error and the rest goes on, shards are read exactly, output is
written once per shard; end to end on a local S3 server through Ray Data, with an engine actor
killed mid-run, and through ``ray job submit`` on a local head."""

from __future__ import annotations

import json
import math
import os
import signal
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from pipelines import cli
from pipelines.batch import job, worker
from pipelines.batch.job import input_shards
from pipelines.batch.output import MANIFEST, SUCCESS, Output, ShardCollector
from pipelines.batch.rows import Columns, parse_record, result_schema
from pipelines.batch.shards import Shard, input_id_type, plan, read_requests
from pipelines.common.storage import StoreConfig, list_files, resolve, s3_filesystem
from pipelines.config import ConfigError, load_config
from pipelines.generate import GenerateConfig, main
from tests.pipelines.batch.fixtures import (
    BAD_ROWS,
    BUCKET,
    CREDENTIALS,
    SHORT_ROWS,
    LocalHead,
    dataset_rows,
    moto_s3,
    parquet_bytes,
    prompt_text,
    read_output,
    save_tiny_chat_model,
    worker_that_waits_to_be_killed,
)
from tests.pipelines.common.waits import wait_until

MAX_NEW_TOKENS = 48
ENGINE = {"device": "cpu", "max_model_len": 128, "max_draft_nodes": 8, "max_batch_size": 4}

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny, tiny_tokenizer):
    return save_tiny_chat_model(tmp_path_factory.mktemp("batch") / "tiny-chat", make_tiny, tiny_tokenizer)


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(EngineConfig(model=str(model_dir), **ENGINE))


@pytest.fixture(scope="module")
def rows():
    return dataset_rows()


@pytest.fixture(scope="module")
def reference(engine, rows):
    """id → the in-process engine's greedy text, for every good row."""
    good = [row for index, row in enumerate(rows) if index not in BAD_ROWS]
    prompts = [engine.encode(prompt_text(row)) for row in good]
    params = [SamplingParams(max_new_tokens=row["max_new_tokens"] or MAX_NEW_TOKENS) for row in good]
    results = engine.generate(prompts, params)
    return {row["id"]: result.text for row, result in zip(good, results)}


@pytest.fixture(scope="module")
def s3(rows):
    """A moto S3 server on 127.0.0.1 holding the dataset as two Parquet files under prompts/."""
    with moto_s3(BUCKET) as client:
        client.put_object(Bucket=BUCKET, Key="prompts/a.parquet", Body=parquet_bytes(rows[:30]))
        client.put_object(Bucket=BUCKET, Key="prompts/b.parquet", Body=parquet_bytes(rows[30:]))
        yield client


@pytest.fixture(scope="module")
def ray_cluster():
    """This module's Ray (or the session's, when another module already started one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def job_args(s3, model_dir, output: str, *extra: str, credentials: bool = True) -> list[str]:
    """The command line of a batch job over the S3 dataset (credentials in config, or left to the
    AWS environment variables)."""
    args = ["configs/generate.yaml", f"input=s3://{BUCKET}/prompts/", f"output=s3://{BUCKET}/{output}"]
    args += [f"engine.model={model_dir}", *(f"engine.{key}={value}" for key, value in ENGINE.items())]
    args += [f"max_new_tokens={MAX_NEW_TOKENS}", "batch.rows_per_shard=10", "batch.batch_size=5"]
    if credentials:
        args += [f"s3.endpoint_url={s3.endpoint}", "s3.access_key_id=testing", "s3.secret_access_key=testing"]
    return [*args, *extra]


def check_output(output_rows: list[dict], rows: list[dict], reference: dict[str, str]) -> None:
    """Every input row once; good rows carry the engine's greedy text, bad rows their error."""
    by_id = {row["id"]: row for row in output_rows}
    assert len(output_rows) == len(by_id) == 50
    assert set(by_id) == {row["id"] for row in rows}
    for index, row in enumerate(rows):
        got = by_id[row["id"]]
        if index in BAD_ROWS:
            assert got["text"] is None and got["finish_reason"] is None
            assert BAD_ROWS[index] in got["error"], got["error"]
        else:
            assert got["error"] is None, got["error"]
            assert got["text"] == reference[row["id"]]
            assert got["finish_reason"] in ("stop", "length")
            assert 0 < got["completion_tokens"] <= (3 if index in SHORT_ROWS else MAX_NEW_TOKENS)
            assert got["prompt_tokens"] == len(prompt_text(row).split())
            assert got["mean_accepted_tokens"] >= 1.0


# ---------------------------------------------------------------- rows


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({}, "missing prompt: the row has neither 'prompt' nor 'messages'"),
        ({"prompt": None, "messages": None}, "missing prompt: the row has neither 'prompt' nor 'messages'"),
        ({"prompt": 42}, "prompt must be a string, got int"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"messages": "hi"}, "messages must be a non-empty list of {role, content} objects"),
        ({"messages": [{"role": "user"}]}, "messages[0].content must be a string, got NoneType"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature must be int or float, got str"),
        ({"prompt": "hi", "max_new_tokens": True}, "max_new_tokens must be int, got bool"),
        ({"prompt": "hi", "stop": [1]}, "stop must be a string or a list of strings"),
        (["a", "list"], "row is not an object with a prompt: list"),
    ],
)
def test_a_bad_record_gets_its_error(record, error):
    request = parse_record(record, Columns(), "part-x.parquet", 4, "x.jsonl:4")
    assert request["error"] == error
    assert (request["id"], request["shard"], request["row"]) == ("x.jsonl:4", "part-x.parquet", 4)


def test_a_good_record_keeps_its_id_and_sampling():
    record = {"id": 7, "prompt": "hi", "max_new_tokens": 5.0, "top_k": math.nan, "stop": "x", "other": 1}
    request = parse_record(record, Columns(), "s", 0, "f:0")
    assert request["error"] is None
    assert (request["id"], request["prompt"], request["messages"]) == ("7", "hi", None)
    assert json.loads(request["sampling"]) == {"max_new_tokens": 5, "stop": ["x"]}  # NaN: pandas' null
    chat = parse_record(
        {"messages": [{"role": "user", "content": "a", "name": "n"}]}, Columns(), "s", 0, "f:0"
    )
    assert json.loads(chat["messages"]) == [{"role": "user", "content": "a"}]


# ---------------------------------------------------------------- ids keep their type


def test_ids_take_the_job_id_type():
    ints, strings = Columns(id_type="int"), Columns()
    assert parse_record({"id": 7, "prompt": "hi"}, ints, "s", 0, "f:0")["id"] == 7
    assert parse_record({"id": 7, "prompt": "hi"}, strings, "s", 0, "f:0")["id"] == "7"
    assert parse_record({"prompt": "hi"}, strings, "s", 0, "f:0")["id"] == "f:0"
    assert parse_record({"prompt": "hi"}, ints, "s", 0, "f:0")["id"] is None
    assert parse_record({"id": math.nan, "prompt": "hi"}, ints, "s", 0, "f:0")["id"] is None  # pandas' null


@pytest.mark.parametrize("bad", ["7", True, 7.0, 2**63])
def test_an_id_that_is_not_an_integer_in_an_integer_job_is_a_bad_row(bad):
    request = parse_record({"id": bad, "prompt": "hi"}, Columns(id_type="int"), "s", 0, "f:0")
    assert request["id"] is None and request["prompt"] == "hi"
    assert request["error"] == f"id must be a 64-bit integer like the input's other ids, got {bad!r}"


def write_inputs(folder, files: dict[str, list[dict]]) -> None:
    """Input files by name: ``.parquet`` through Arrow's own type inference, ``.jsonl`` as lines."""
    folder.mkdir(exist_ok=True)
    for name, records in files.items():
        if name.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(records), folder / name)
        else:
            (folder / name).write_text("".join(json.dumps(record) + "\n" for record in records))


def id_type_of_input(folder) -> str:
    fs, path = resolve(str(folder), StoreConfig())
    return input_id_type(fs, plan(fs, *list_files(fs, path), "auto", rows_per_shard=2), "id")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.parquet": [{"id": 1, "prompt": "a"}, {"id": None, "prompt": "b"}]}, "int"),
        ({"a.parquet": [{"id": "x", "prompt": "a"}]}, "string"),
        ({"a.parquet": [{"prompt": "a"}], "b.jsonl": [{"prompt": "b"}]}, "string"),  # no id column
        ({"a.jsonl": [{"id": 3, "prompt": "a"}, {"id": "later", "prompt": "b"}]}, "int"),  # first row
        ({"a.jsonl": [{"prompt": "a"}, {"id": 4, "prompt": "b"}]}, "string"),
        ({"a.parquet": [{"id": 1, "prompt": "a"}], "b.jsonl": [{"prompt": "b"}]}, "int"),
    ],
)
def test_the_input_id_column_sets_the_id_type(tmp_path, files, expected):
    write_inputs(tmp_path / "in", files)
    assert id_type_of_input(tmp_path / "in") == expected


def test_files_with_ids_of_two_types_are_refused(tmp_path):
    files = {"a.parquet": [{"id": 1, "prompt": "a"}], "b.jsonl": [{"id": "b", "prompt": "b"}]}
    write_inputs(tmp_path / "in", files)
    expected = "'id' columns differ in type: .*a.parquet holds integers, .*b.jsonl other values"
    with pytest.raises(ValueError, match=expected):
        id_type_of_input(tmp_path / "in")


# ---------------------------------------------------------------- shards


def test_jsonl_shards_seek_to_their_rows(tmp_path):
    lines = [
        '{"prompt": "a"}',
        "",
        '{"prompt": "b", "id": "B"}',
        "{not json",
        '{"prompt": "c"}',
        '{"prompt": "d"}',
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jsonl").write_text("\n".join(lines))  # no final newline
    fs, path = resolve(str(tmp_path / "in"), StoreConfig())
    folder, files = list_files(fs, path)
    shards = plan(fs, folder, files, "auto", rows_per_shard=2)
    assert [(s.start, s.stop) for s in shards] == [(0, 2), (2, 4), (4, 5)]
    assert len({s.name for s in shards}) == 3 and all(s.name.startswith("part-p-") for s in shards)
    requests = [r for shard in shards for r in read_requests(fs, shard, Columns())]
    assert [r["id"] for r in requests] == ["p.jsonl:0", "B", "p.jsonl:2", "p.jsonl:3", "p.jsonl:4"]
    assert [r["prompt"] for r in requests] == ["a", "b", None, "c", "d"]
    assert requests[2]["error"].startswith("not valid JSON")


def test_parquet_shards_read_only_their_rows(tmp_path):
    table = pa.table({"prompt": [f"p{i}" for i in range(11)], "unused": list(range(11))})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=3)
    fs, path = resolve(str(tmp_path / "*.parquet"), StoreConfig())
    shards = plan(fs, *list_files(fs, path), "auto", rows_per_shard=4)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 11)]
    prompts = [[r["prompt"] for r in read_requests(fs, shard, Columns())] for shard in shards]
    assert prompts == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9", "p10"]]


def test_an_output_folder_inside_the_input_is_not_input(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"prompt": ["not input"]}), tmp_path / "out" / "part-p-0.parquet")
    cfg = load_config(GenerateConfig, None, [f"input={tmp_path}", f"output={tmp_path / 'out'}"])
    shards = input_shards(cfg, str(tmp_path / "out"))
    assert [(shard.label, shard.rows) for shard in shards] == [("p.jsonl", 2)]


# ---------------------------------------------------------------- engine worker


def requests_for(records: list[dict]) -> list[dict]:
    return [parse_record(record, Columns(), "s", row, f"f:{row}") for row, record in enumerate(records)]


def test_worker_generates_good_rows_and_isolates_bad_ones(engine):
    records = [
        {"prompt": "t1 t2 t3"},
        {"prompt": " ".join(["t4"] * 200)},
        {"prompt": "t5 t6", "temperature": -1.0},
        {"messages": [{"role": "system", "content": "t7"}, {"role": "user", "content": "t8 t9"}]},
        {"prompt": "t5 t6", "max_new_tokens": 2},
    ]
    results = worker.generate_rows(engine, requests_for(records), SamplingParams(max_new_tokens=6), chat=True)
    pa.Table.from_pylist(results, schema=result_schema())  # the actor's output schema holds them
    alone = [engine.generate([engine.encode(text)], SamplingParams(max_new_tokens=n))[0].text for text, n in
             [("t1 t2 t3", 6), ("t7 t8 t9", 6), ("t5 t6", 2)]]  # fmt: skip
    assert [results[i]["text"] for i in (0, 3, 4)] == alone
    assert results[1]["error"].startswith("prompt beyond the context: prompt has 200 tokens")
    assert results[1]["prompt_tokens"] == 200
    assert results[2]["error"] == "temperature must be >= 0, got -1.0"
    assert results[4]["completion_tokens"] == 2 and results[4]["finish_reason"] == "length"


def test_an_engine_refusal_fails_only_that_row(engine, monkeypatch):
    monkeypatch.setattr(worker, "check_room", lambda engine, ids: None)  # let the engine refuse it
    requests = requests_for([{"prompt": "t1"}, {"prompt": " ".join(["t4"] * 200)}, {"prompt": "t2"}])
    results = worker.generate_rows(engine, requests, SamplingParams(max_new_tokens=3), chat=False)
    assert [r["error"] is None for r in results] == [True, False, True]
    assert "prompt has 200 tokens" in results[1]["error"]


# ---------------------------------------------------------------- output


def result_row(row: int, shard: str = "part-a.parquet") -> dict:
    return {"shard": shard, "row": row, "id": f"a:{row}", "prompt": "p", "text": "t", "prompt_tokens": 1}


def test_collector_writes_a_shard_once_when_complete(tmp_path):
    output = Output(*resolve(str(tmp_path / "out"), StoreConfig()))
    collector = ShardCollector(
        output, [Shard("part-a.parquet", "in/a.parquet", "a.parquet", "parquet", 0, 3)]
    )
    collector.add(pa.Table.from_pylist([result_row(2), result_row(0)], schema=result_schema()))
    assert output.done() == set()
    collector.add(pa.Table.from_pylist([result_row(0), result_row(1)], schema=result_schema()))  # 0 again
    collector.finish()
    assert output.done() == {"part-a.parquet"} and collector.duplicates == 1
    assert [r["id"] for r in pq.read_table(tmp_path / "out" / "part-a.parquet").to_pylist()] == [
        "a:0",
        "a:1",
        "a:2",
    ]
    assert sorted(os.listdir(tmp_path / "out")) == ["part-a.parquet"]  # no temporary file left


def test_an_output_refuses_other_settings(tmp_path):
    output = Output(*resolve(str(tmp_path / "out"), StoreConfig()))
    output.pin({"max_new_tokens": 8, "model": "m"}, [])
    output.pin({"max_new_tokens": 8, "model": "m"}, [])
    with pytest.raises(ValueError, match="started with max_new_tokens=8; this run has max_new_tokens=9"):
        output.pin({"max_new_tokens": 9, "model": "m"}, [])
    assert (tmp_path / "out" / MANIFEST).exists()


def test_an_output_from_before_typed_ids_resumes_with_string_ids_only(tmp_path):
    output = Output(*resolve(str(tmp_path / "out"), StoreConfig()))
    output.pin({"model": "m"}, [])  # a manifest without id_type: every id was a string then
    output.pin({"model": "m", "id_type": "string"}, [])
    with pytest.raises(ValueError, match="started with id_type='string'; this run has id_type='int'"):
        output.pin({"model": "m", "id_type": "int"}, [])


def test_s3_endpoint_and_credentials_from_the_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    fs = s3_filesystem(StoreConfig())
    assert list_files(fs, f"{BUCKET}/prompts/*.parquet")[1] == [
        f"{BUCKET}/prompts/a.parquet",
        f"{BUCKET}/prompts/b.parquet",
    ]


def test_batch_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match="batch.colour"):
        load_config(GenerateConfig, "configs/generate.yaml", ["batch.colour=red"])
    with pytest.raises(ValueError, match="batch.max_actors"):
        load_config(GenerateConfig, "configs/generate.yaml", ["batch.min_actors=3", "batch.max_actors=2"])
    with pytest.raises(ValueError, match="needs both input=PATH and output=PATH"):
        main(load_config(GenerateConfig, "configs/generate.yaml", ["input=x.parquet"]))


# ---------------------------------------------------------------- end to end (Ray)


@pytest.fixture
def local_head():
    """A Ray head of its own, stopped before the in-process tests start theirs (2 cores)."""
    head = LocalHead(num_cpus=4).start()
    yield head
    head.stop()


def test_ray_job_submit_to_a_local_head(s3, model_dir, rows, reference, local_head):
    env = CREDENTIALS | {"AWS_ENDPOINT_URL": s3.endpoint}  # the standard AWS variables, no s3.* keys
    args = ["python", "-m", "pipelines.generate", *job_args(s3, model_dir, "submitted/", credentials=False)]
    done = local_head.submit(args, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tandem] 50 rows (3 errors)" in done.stdout
    check_output(read_output(s3, "submitted/")[0], rows, reference)


def test_s3_job_writes_every_row_once_and_resumes_to_nothing(s3, model_dir, rows, reference, ray_cluster):
    assert cli.run("generate", job_args(s3, model_dir, "out/", "batch.max_actors=2")) == 0
    output_rows, etags = read_output(s3, "out/")
    check_output(output_rows, rows, reference)
    assert f"out/{SUCCESS}" in etags and len([key for key in etags if key.endswith(".parquet")]) == 5

    cfg = load_config(GenerateConfig, *split(job_args(s3, model_dir, "out/", "engine.drafter=none")))
    summary = main(cfg)  # another drafter gives the same rows, so it may resume this output
    assert (summary.rows, summary.written, summary.skipped) == (0, 0, 5)
    assert read_output(s3, "out/")[1] == etags  # nothing rewritten


def test_integer_ids_come_out_as_integers_and_join_back(tmp_path, model_dir, engine, ray_cluster):
    """A local job over Parquet and JSONL with integer ids: the output's id column is int64 and
    joins the input on it; a row without an id has a null id."""
    records = [{"id": 10 + index, "prompt": f"t{index} t{index + 1}"} for index in range(4)]
    write_inputs(tmp_path / "in", {"a.parquet": records[:3], "b.jsonl": [records[3], {"prompt": "t9"}]})
    args = [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", f"engine.model={model_dir}"]
    args += [*(f"engine.{key}={value}" for key, value in ENGINE.items()), "max_new_tokens=4"]
    assert main(load_config(GenerateConfig, "configs/generate.yaml", args)).rows == 5

    output = pq.read_table(tmp_path / "out")
    assert output.schema.field("id").type == pa.int64()
    asked = pa.Table.from_pylist(records).rename_columns(["id", "asked"])
    joined = {row["id"]: row for row in output.join(asked, "id", join_type="inner").to_pylist()}
    assert sorted(joined) == [10, 11, 12, 13]
    for record in records:
        alone = engine.generate([engine.encode(record["prompt"])], SamplingParams(max_new_tokens=4))[0]
        assert (joined[record["id"]]["asked"], joined[record["id"]]["text"]) == (record["prompt"], alone.text)
    assert [row["prompt"] for row in output.to_pylist() if row["id"] is None] == ["t9"]


def split(args: list[str]) -> tuple[str, list[str]]:
    return args[0], args[1:]


def test_a_killed_engine_actor_loses_no_row(
    s3, model_dir, rows, reference, ray_cluster, tmp_path, monkeypatch
):
    """An engine actor killed while it holds a batch (it announced the batch in a marker file and
    waits there): Ray restarts it and retries the batch, and every row is written once."""
    marker = tmp_path / "batch-started"
    monkeypatch.setattr(job, "EngineWorker", worker_that_waits_to_be_killed(marker))
    extra = ("batch.rows_per_shard=5", "batch.batch_size=1", "batch.min_actors=2", "batch.max_actors=2")
    cfg = load_config(
        GenerateConfig, *split(job_args(s3, model_dir, "kill/", *extra, "batch.tasks_per_actor=1"))
    )
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=main(cfg)))
    thread.start()
    pid = int(wait_until(lambda: marker.exists() and marker.read_text(), "an engine actor to start a batch"))
    os.kill(pid, signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive(), "the job did not finish after its engine actor was killed"
    assert "summary" in outcome, "the job failed after its engine actor was killed (traceback above)"
    summary = outcome["summary"]
    assert (summary.rows, summary.written) == (50, 10)
    check_output(read_output(s3, "kill/")[0], rows, reference)

    again = main(cfg)
    assert (again.rows, again.skipped) == (0, 10)

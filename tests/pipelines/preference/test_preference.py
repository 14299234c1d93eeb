"""``tandem preference``: its config, a dataset with malformed rows (reported by row, the rest
used), and ``ray job submit`` training on an ``s3://`` dataset into ``s3://`` storage on a tiny
random model."""

from __future__ import annotations

import io
import json
import os
import random
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common.storage import StoreConfig
from pipelines.config import ConfigError, load_config
from pipelines.preference import DataConfig, PreferenceConfig
from pipelines.preference.dataset import load_pairs
from tests.actors.trainers.preference.test_loop import STEP_METRICS
from tests.pipelines.batch.fixtures import CREDENTIALS, LocalHead, moto_s3, save_tiny_chat_model

BUCKET = "tandem-preference"
EOS = 62

#: row number -> the reason it is left out (a substring of it)
BAD_ROWS = {
    3: "missing column 'chosen'",
    7: "empty chosen",
    11: "rejected must be a string",
    15: "messages[0].content must be a string",
    19: "not valid JSON",
    23: "chosen and rejected are the same",
    27: "longer than data.max_length=128",
}


def words(rng: random.Random, count: int) -> str:
    return " ".join(f"t{rng.randrange(60)}" for _ in range(count))


def preference_lines(n: int = 40, seed: int = 0) -> list[str]:
    """JSONL lines of pairs over the tiny vocabulary, with the bad rows of :data:`BAD_ROWS`; row 5
    asks in chat turns and row 9 answers in TRL's conversational form."""
    rng = random.Random(seed)
    rows: list[object] = []
    for _ in range(n):
        chosen = " ".join(f"t{rng.randrange(10)}" for _ in range(3))
        rejected = " ".join(f"t{10 + rng.randrange(10)}" for _ in range(3))
        rows.append({"prompt": words(rng, 4), "chosen": chosen, "rejected": rejected})
    rows[5] = {"messages": [{"role": "user", "content": rows[5]["prompt"]}]} | {
        k: rows[5][k] for k in ("chosen", "rejected")
    }
    rows[9]["chosen"] = [{"role": "assistant", "content": rows[9]["chosen"]}]
    del rows[3]["chosen"]
    rows[7]["chosen"] = ""
    rows[11]["rejected"] = 5
    rows[15] = {"messages": [{"role": "user", "content": None}], "chosen": "t1", "rejected": "t2"}
    rows[23]["rejected"] = rows[23]["chosen"]
    rows[27]["prompt"] = words(rng, 300)
    lines = [json.dumps(row) for row in rows]
    lines[19] = '{"prompt": "t1", "chosen": '  # cut short
    return lines


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of its own for the dataset stage (Ray Data), shut down after the module."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def parquet_file(path: Path, columns: dict) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    path.write_bytes(buffer.getvalue())


def test_bad_rows_are_reported_by_row_and_the_rest_are_used(tmp_path, tiny_tokenizer, local_ray):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(preference_lines()) + "\n")
    pairs, bad, rows = load_pairs(
        DataConfig(dataset=str(path), max_length=128), StoreConfig(), tiny_tokenizer
    )
    assert rows == 40 and len(pairs) == 40 - len(BAD_ROWS)
    assert {row.row: row.reason for row in bad}.keys() == BAD_ROWS.keys()
    for row in bad:
        assert BAD_ROWS[row.row] in row.reason, row
    assert [p.source for p in pairs] == [i for i in range(40) if i not in BAD_ROWS]
    conversational = next(p for p in pairs if p.source == 9)
    assert conversational.chosen_ids[-1] == EOS and len(conversational.chosen_ids) == 4  # 3 words + EOS


def test_a_parquet_file_without_a_column_reports_every_row(tmp_path, tiny_tokenizer, local_ray):
    parquet_file(tmp_path / "pairs.parquet", {"prompt": ["t1 t2", "t3"], "chosen": ["t4", "t5"]})
    pairs, bad, _ = load_pairs(DataConfig(dataset=str(tmp_path / "*.parquet")), StoreConfig(), tiny_tokenizer)
    assert not pairs
    assert [(row.row, row.reason) for row in bad] == [
        (0, "missing column 'rejected'"),
        (1, "missing column 'rejected'"),
    ]


def test_rows_are_numbered_over_the_files_in_order(tmp_path, tiny_tokenizer, local_ray):
    """JSONL and Parquet files in one folder, numbered in sorted file order; Parquet files whose
    ``chosen`` column has different types (Ray Data cannot read them as one); blank lines skipped."""
    good = json.dumps({"prompt": "t1", "chosen": "t2", "rejected": "t3"})
    (tmp_path / "a.jsonl").write_text(f"{good}\n  \n{{broken\n\n{good}\n")
    parquet_file(
        tmp_path / "b.parquet", {"prompt": ["t4", "t5"], "chosen": ["t6", "t7"], "rejected": ["t8", "t7"]}
    )
    turn = [{"role": "assistant", "content": "t9"}]
    parquet_file(
        tmp_path / "c.parquet", {"prompt": ["t1", None], "chosen": [turn, turn], "rejected": ["t2", "t3"]}
    )
    pairs, bad, rows = load_pairs(DataConfig(dataset=str(tmp_path)), StoreConfig(), tiny_tokenizer)
    assert rows == 7 and [p.source for p in pairs] == [0, 2, 3, 5]
    assert [(row.row, Path(row.file).name, row.reason.split(" (")[0]) for row in bad] == [
        (1, "a.jsonl", "not valid JSON"),
        (4, "b.parquet", "chosen and rejected are the same: nothing to prefer"),
        (6, "c.parquet", "missing column 'prompt'"),
    ]
    conversational = pairs[3]  # c.parquet's first row: chosen as one assistant message
    assert len(conversational.chosen_ids) == 2 and conversational.chosen_ids[-1] == EOS
    assert conversational.prompt_ids == pairs[0].prompt_ids


@pytest.mark.parametrize("path", ["configs/preference_dpo.yaml", "configs/preference_simpo.yaml"])
def test_the_demo_configs_load(path):
    cfg = load_config(PreferenceConfig, path)
    assert cfg.task.name == "arithmetic" and cfg.eval.problems == 100 and not cfg.data.dataset
    assert cfg.loss.loss_type in ("sigmoid", "simpo") and cfg.eval.seed != cfg.seed


def test_trl_defaults_and_bad_values_are_named():
    cfg = load_config(PreferenceConfig)
    assert (cfg.loss.loss_type, cfg.loss.beta, cfg.loss.label_smoothing, cfg.loss.simpo_gamma) == (
        "sigmoid",
        0.1,
        0.0,
        0.5,
    )
    with pytest.raises(ConfigError, match="loss.betta"):
        load_config(PreferenceConfig, None, ["loss.betta=0.2"])
    with pytest.raises(ValueError, match="loss.loss_type"):
        load_config(PreferenceConfig, None, ["loss.loss_type=kto"])
    with pytest.raises(ValueError, match="label_smoothing"):
        load_config(PreferenceConfig, None, ["loss.loss_type=ipo", "loss.label_smoothing=0.1"])
    with pytest.raises(ValueError, match="loss.beta"):
        load_config(PreferenceConfig, None, ["loss.beta=0"])
    with pytest.raises(ValueError, match="sampling.n"):
        load_config(PreferenceConfig, None, ["sampling.n=1"])
    with pytest.raises(ValueError, match="must split over"):
        load_config(PreferenceConfig, None, ["train.batch_size=3", "workers.num_workers=2"])


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    return save_tiny_chat_model(
        tmp_path_factory.mktemp("preference-job") / "policy", make_tiny, tiny_tokenizer
    )


@pytest.mark.slow
def test_ray_job_submit_trains_on_an_s3_dataset_into_s3(chat_model_dir, tmp_path, monkeypatch):
    if not (Path.home() / ".ray" / "auth_token").exists() and "RAY_AUTH_TOKEN" not in os.environ:
        monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))  # a fresh token for this head only
    metrics = tmp_path / "preference.json"
    args = ["python", "-m", "pipelines.preference", f"engine.model={chat_model_dir}"]
    args += ["engine.max_model_len=128", "engine.max_batch_size=16", "data.max_length=128"]
    args += [f"data.dataset=s3://{BUCKET}/pairs/*.jsonl", "eval.pairs=8", "eval.problems=2"]
    args += ["task.name=token_share", "sampling.max_new_tokens=6", "train.lr=1e-2", "train.batch_size=4"]
    args += ["train.epochs=2", "checkpoint_every=5", "name=submitted", f"storage_path=s3://{BUCKET}/runs"]
    args += [f"metrics_out={metrics}", "workers.num_workers=2", "workers.cpus_per_worker=1"]  # DDP
    with moto_s3(BUCKET) as s3:
        s3.put_object(Bucket=BUCKET, Key="pairs/part-0.jsonl", Body="\n".join(preference_lines()).encode())
        head = LocalHead(num_cpus=4).start()
        try:
            done = head.submit(args, CREDENTIALS | {"AWS_ENDPOINT_URL": s3.endpoint}, timeout=600)
        finally:
            head.stop()
        keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bad row 19" in done.stdout and "[tandem preference] 12 steps in 1 round(s)" in done.stdout
    assert "runs/submitted/checkpoint_000012/model.safetensors" in keys
    record = json.loads(metrics.read_text())
    assert [row["row"] for row in record["data"]["bad_rows"]] == sorted(BAD_ROWS)
    assert record["data"]["pairs"] == 40 - len(BAD_ROWS) - 8 and record["data"]["held_out_pairs"] == 8
    assert [h["step"] for h in record["history"]] == list(range(1, 13))
    assert set(record["history"][0]) >= STEP_METRICS
    start, end = record["eval"]["start"], record["eval"]["end"]
    assert start["policy_version"] == 0 and end["policy_version"] == 1
    assert {"pair_accuracy", "strict_accuracy", "mean_length", "seed"} <= set(start) & set(end)
    assert (
        start["pair_accuracy"] == 0.0 and end["pair_accuracy"] > 0.5
    )  # DPO: policy = reference at the start
    assert metrics.with_suffix(".png").stat().st_size

"""``ray job submit --working-dir . -- python -m pipelines.distill ...`` against a local head, with
prompts, rows and checkpoints in a local S3 server (the real pyarrow S3 code path)."""

from __future__ import annotations

import json

import pytest

from tests.pipelines.batch.fixtures import CREDENTIALS, LocalHead, moto_s3
from tests.pipelines.distill.test_distill import write_prompts

BUCKET = "tandem-distill"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding 40 tiny-vocabulary prompts under prompts/."""
    prompts = tmp_path_factory.mktemp("distill-s3") / "prompts.jsonl"
    write_prompts(prompts, 40)
    with moto_s3(BUCKET) as client:
        client.put_object(Bucket=BUCKET, Key="prompts/tiny.jsonl", Body=prompts.read_bytes())
        yield client


@pytest.fixture
def local_head():
    head = LocalHead(num_cpus=4).start()
    yield head
    head.stop()


def test_ray_job_submit_distills_into_s3(s3, local_head, verifier_dir):
    args = ["python", "-m", "pipelines.distill", "configs/distill.yaml", f"engine.model={verifier_dir}"]
    args += ["engine.device=cpu", "engine.drafter=none", "engine.max_model_len=128", "teacher.chat=false"]
    args += [f"data.prompts=s3://{BUCKET}/prompts/", "data.eval_prompts=4", "teacher.max_new_tokens=16"]
    args += ["student.num_layers=1", "train.max_steps=20", "train.checkpoint_every=10", "eval.prompts=0"]
    args += [f"storage_path=s3://{BUCKET}/runs", "name=submitted", "output=", "metrics_out="]
    done = local_head.submit(args, CREDENTIALS | {"AWS_ENDPOINT_URL": s3.endpoint})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tandem distill] steps 0→20, 40 rows made" in done.stdout
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}
    assert {"runs/submitted/data/_SUCCESS", "runs/submitted/checkpoint_000020/model.safetensors"} <= keys
    state = s3.get_object(Bucket=BUCKET, Key="runs/submitted/checkpoint_000020/trainer_state.json")
    assert json.loads(state["Body"].read())["step"] == 20

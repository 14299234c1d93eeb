"""``tandem rl`` end to end on a tiny random model: its config, ``ray job submit`` with the run in
a local S3 server, and 2-worker resumes (DDP and DeepSpeed ZeRO-2) equal to uninterrupted runs."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from safetensors.torch import load_file

from pipelines.config import ConfigError, load_config
from pipelines.rl import RLConfig, main
from tests.pipelines.batch.fixtures import CREDENTIALS, LocalHead, free_port, save_tiny_chat_model

BUCKET = "tandem-rl"


def tiny_args(model_dir, *extra: str) -> list[str]:
    args = [f"engine.model={model_dir}", "engine.max_model_len=128", "engine.max_batch_size=16"]
    args += [
        "task.name=token_share",
        "rollout.max_new_tokens=12",
        "rollout.problems_per_step=4",
        "rollout.n=4",
    ]
    args += ["optim.lr=2e-2", "eval.problems=4", "checkpoint_every=3", "workers.cpus_per_worker=1"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    return save_tiny_chat_model(tmp_path_factory.mktemp("rl-job") / "policy", make_tiny, tiny_tokenizer)


def test_presets_expand_under_what_is_given_and_bad_keys_are_named():
    dapo = load_config(RLConfig, None, ["preset=dapo"])
    assert dapo.algorithm.clip_ratio_high == 0.28 and dapo.algorithm.filter_groups.enable
    assert (
        load_config(
            RLConfig, None, ["preset=dapo", "algorithm.clip_ratio_high=0.3"]
        ).algorithm.clip_ratio_high
        == 0.3
    )
    assert (
        load_config(RLConfig, None, ["preset=dr_grpo"]).algorithm.loss_agg_mode == "seq-mean-token-sum-norm"
    )
    with pytest.raises(ConfigError, match="preset"):
        load_config(RLConfig, None, ["preset=ppo"])
    with pytest.raises(ConfigError, match="algorithm.clip_high"):
        load_config(RLConfig, None, ["algorithm.clip_high=0.3"])
    with pytest.raises(ValueError, match="rollout.n"):
        load_config(RLConfig, None, ["rollout.n=1"])
    with pytest.raises(ValueError, match="max_model_len"):
        load_config(RLConfig, None, ["engine.max_model_len=100", "rollout.max_new_tokens=128"])


@pytest.mark.parametrize("path", ["configs/rl_grpo_arith.yaml", "configs/rl_short_rl.yaml"])
def test_the_demo_configs_load(path):
    cfg = load_config(RLConfig, path)
    assert cfg.task.name == "arithmetic" and cfg.eval.problems == 200 and cfg.task.few_shot == 2


def test_the_grpo_demo_is_the_short_rl_demo_with_its_length_term_off():
    """docs/rl.md runs the Short-RL control as ``configs/rl_short_rl.yaml reward.length=none``:
    it must be the GRPO demo file's run (same seeds, problems and settings), under another name."""
    control = load_config(RLConfig, "configs/rl_short_rl.yaml", ["reward.length=none"])
    grpo = load_config(RLConfig, "configs/rl_grpo_arith.yaml")
    for cfg in (control, grpo):
        cfg.name = cfg.metrics_out = ""
        cfg.reward.acc_tolerance = 0.0  # the length term's gate: unused without the term
    assert control == grpo


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def final_weights(record: dict) -> dict:
    return load_file(f"{record['checkpoint']}/model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_two_workers_resume_at_step_3_to_6_as_if_uninterrupted(strategy, chat_model_dir, tmp_path, local_ray):
    args = tiny_args(
        chat_model_dir, "workers.num_workers=2", f"workers.strategy={strategy}", "eval.problems=0"
    )
    args += [f"storage_path={tmp_path}"]
    straight = main(load_config(RLConfig, None, [*args, "steps=6", "name=straight"]))
    main(load_config(RLConfig, None, [*args, "steps=3", "name=resumed"]))
    # the same name resumes; `steps` is the only setting allowed to differ between the two
    resumed = main(load_config(RLConfig, None, [*args, "steps=6", "name=resumed"]))
    assert [h["step"] for h in resumed["history"]] == list(range(1, 7))
    assert [h["reward/mean"] for h in resumed["history"]] == [h["reward/mean"] for h in straight["history"]]
    expected, final = final_weights(straight), final_weights(resumed)
    assert all(torch.equal(final[key], expected[key]) for key in expected)


@pytest.fixture
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)
    client.endpoint = f"http://127.0.0.1:{port}"
    yield client
    server.stop()


@pytest.mark.slow
def test_ray_job_submit_trains_into_s3(s3, chat_model_dir, tmp_path):
    head = LocalHead(num_cpus=4).start()
    try:
        metrics = tmp_path / "rl.json"
        args = ["python", "-m", "pipelines.rl", *tiny_args(chat_model_dir, "steps=3", "name=submitted")]
        args += [f"storage_path=s3://{BUCKET}/runs", f"metrics_out={metrics}"]
        done = head.submit(args, CREDENTIALS | {"AWS_ENDPOINT_URL": s3.endpoint})
    finally:
        head.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tandem rl] 3 steps" in done.stdout
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]}
    assert "runs/submitted/checkpoint_000003/model.safetensors" in keys
    record = json.loads(metrics.read_text())
    assert [h["policy_version"] for h in record["history"]] == [1, 2, 3]
    assert record["eval"]["start"]["policy_version"] == 0 and record["eval"]["end"]["policy_version"] == 3
    assert {
        "reward/mean",
        "completions/mean_length",
        "rollout_train_logprob_diff/max",
        "spec/tokens_per_step",
    } <= set(record["history"][0])
    assert (
        record["config"]["algorithm"]["clip_ratio_high"] == 0.2 and metrics.with_suffix(".png").stat().st_size
    )


def test_replay_is_refused_without_a_drafter_or_coupled_seeds():
    replay = ["rollout.replay=true", "rollout.train_problems=16"]
    with pytest.raises(ValueError, match="seed_mode=coupled"):
        load_config(RLConfig, None, replay)
    with pytest.raises(ValueError, match="engine.drafter=none"):
        load_config(RLConfig, None, [*replay, "rollout.seed_mode=coupled", "engine.drafter=none"])
    cfg = load_config(RLConfig, None, [*replay, "rollout.seed_mode=coupled"])
    assert cfg.rollout.replay and cfg.rollout.train_problems == 16

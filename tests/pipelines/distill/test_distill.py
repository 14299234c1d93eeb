"""The distillation job on a local Ray: rows from verifier actors (Ray Data), training (Ray Train),
a stopped run resumed at its step, acceptance raised on held-out prompts, and the result
hot-swapped into a live drafter actor."""

from __future__ import annotations

import json
import random

import pytest
import ray

from actors.engine import EngineConfig
from actors.messages import SamplingParams
from actors.trainers.students import StudentConfig, build_student, save_student
from pipelines.config import ConfigError, load_config
from pipelines.distill import DistillConfig, main
from pipelines.graph import GraphConfig, Placement, start_graph

ENGINE = ["engine.device=cpu", "engine.max_model_len=256", "engine.max_draft_nodes=8"]
ENGINE += ["engine.adaptive_budget=false", "engine.max_batch_size=64"]
HELD_OUT = 16


def write_prompts(path, n: int, seed: int = 0) -> None:
    """``n`` random prompts over the tiny vocabulary, one JSON object a line."""
    rng = random.Random(seed)
    with open(path, "w") as lines:
        for _ in range(n):
            words = " ".join(f"t{rng.randrange(62)}" for _ in range(rng.randrange(4, 12)))
            lines.write(json.dumps({"prompt": words}) + "\n")


def job_args(verifier_dir, prompts, storage, *extra: str) -> list[str]:
    """A job small enough for 2 cores that still teaches a 1-layer student the tiny verifier."""
    args = [
        f"engine.model={verifier_dir}",
        *ENGINE,
        f"data.prompts={prompts}",
        f"data.eval_prompts={HELD_OUT}",
    ]
    args += [
        "data.batch_size=64",
        "teacher.chat=false",
        "teacher.max_new_tokens=48",
        "teacher.temperature=1.0",
    ]
    args += ["student.num_layers=1", "train.freeze_embeddings=false", "train.learning_rate=3e-3"]
    args += ["train.warmup_steps=5", "train.max_steps=200", "train.log_every=50", "train.checkpoint_every=50"]
    args += ["workers.cpus_per_worker=2"]
    args += [f"eval.prompts={HELD_OUT}", "eval.max_new_tokens=48", f"storage_path={storage}", "name=tiny"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_config_file_loads_and_bad_keys_are_named():
    cfg = load_config(DistillConfig, "configs/distill.yaml")
    assert cfg.train.loss == "fkl" and cfg.data.prompts == "humaneval"
    with pytest.raises(ConfigError, match="train.colour"):
        load_config(DistillConfig, "configs/distill.yaml", ["train.colour=red"])
    with pytest.raises(ValueError, match="train.loss"):
        load_config(DistillConfig, "configs/distill.yaml", ["train.loss=l2"])
    with pytest.raises(ValueError, match="workers.strategy"):
        load_config(DistillConfig, "configs/distill.yaml", ["workers.strategy=fsdp"])
    with pytest.raises(ValueError, match="eval.prompts"):
        load_config(DistillConfig, "configs/distill.yaml", ["eval.prompts=30"])


def tokens_per_step(results) -> float:
    return sum(r.stats.new_tokens for r in results) / sum(r.stats.steps for r in results)


def test_distillation_resumes_raises_acceptance_and_hot_swaps(local_ray, verifier_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 240)
    student, tokenizer = build_student(StudentConfig(num_layers=1), str(verifier_dir))
    initial = save_student(student, tokenizer, tmp_path / "initial")
    engine = EngineConfig(
        model=str(verifier_dir), drafter=f"model:{initial}", device="cpu", max_model_len=256
    )
    engine.max_draft_nodes, engine.adaptive_budget = 8, False
    idle = Placement(num_cpus=0)
    graph = start_graph(GraphConfig(engine=engine, drafter=idle, verifier=idle, name="distill-live"))
    lines = prompts.read_text().splitlines()[:HELD_OUT]
    held_out = [[int(word[1:]) for word in json.loads(line)["prompt"].split()] for line in lines]
    params = SamplingParams(max_new_tokens=48)
    live_before = ray.get(graph.engine.generate.remote(held_out, params), timeout=120)

    args = job_args(verifier_dir, prompts, tmp_path / "runs")
    stopped = main(load_config(DistillConfig, None, [*args, "train.stop_at=100", "eval.prompts=0"]))
    assert (stopped.first_step, stopped.last_step) == (0, 100) and stopped.rows_written == 240

    extra = [
        "hot_swap=[distill-live-drafter]",
        f"output={tmp_path / 'drafter'}",
        f"metrics_out={tmp_path / 'm.json'}",
    ]
    resumed = main(load_config(DistillConfig, None, [*args, *extra]))
    assert (resumed.first_step, resumed.last_step, resumed.rows_written) == (100, 200, 0)
    assert resumed.acceptance["after"] > resumed.acceptance["before"] + 0.15, resumed.acceptance
    history = json.loads((tmp_path / "m.json").read_text())["history"]
    assert [row["step"] for row in history if "val_top1" in row] == [0, 50, 100, 150, 200]
    assert history[-1]["val_top1"] > history[0]["val_top1"] + 0.05
    assert (tmp_path / "m.png").stat().st_size > 10_000
    shared = json.loads((tmp_path / "drafter" / "tandem_shared.json").read_text())["from_verifier"]
    assert "model.embed_tokens.weight" not in shared  # trained here (freeze_embeddings=false): saved

    assert resumed.swapped == ["distill-live-drafter"]
    live_after = ray.get(graph.engine.generate.remote(held_out, params), timeout=120)
    assert [r.token_ids for r in live_after] == [r.token_ids for r in live_before]  # lossless
    assert tokens_per_step(live_after) > tokens_per_step(live_before) + 0.15
    for actor in (graph.engine, graph.drafter):
        ray.kill(actor)


def test_deepspeed_zero2_over_two_workers_checkpoints_and_resumes(local_ray, verifier_dir, tmp_path):
    pytest.importorskip("deepspeed")
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 40)
    args = job_args(verifier_dir, prompts, tmp_path / "runs")
    args += ["workers.strategy=deepspeed", "workers.num_workers=2", "workers.cpus_per_worker=1"]
    args += ["data.eval_prompts=4", "eval.prompts=0", "train.max_steps=20", "train.checkpoint_every=10"]
    stopped = main(load_config(DistillConfig, None, [*args, "train.stop_at=10"]))
    assert (stopped.first_step, stopped.last_step) == (0, 10)
    # one checkpoint: worker 0's weights and both workers' optimizer partitions, merged by Ray Train
    saved = tmp_path / "runs" / "tiny" / "checkpoint_000010"
    assert (saved / "model.safetensors").is_file()
    assert len(list((saved / "deepspeed" / "state").glob("zero_pp_rank_*_optim_states.pt"))) == 2

    resumed = main(load_config(DistillConfig, None, [*args, f"output={tmp_path / 'drafter'}"]))
    assert (resumed.first_step, resumed.last_step, resumed.rows_written) == (10, 20, 0)
    assert (tmp_path / "drafter" / "model.safetensors").is_file()

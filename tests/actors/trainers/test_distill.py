"""The distillation pieces without Ray: teacher rows line up with the verifier, students are cut
correctly and load as drafters, batches are ordered by step, and a resumed run is exactly an
uninterrupted one."""

import random
import socket

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.trainers.checkpoints import load_checkpoint
from actors.trainers.data import chain_steps, collate, step_rows
from actors.trainers.distill import Distiller, TrainConfig, train
from actors.trainers.students import StudentConfig, build_student, pick_layers, save_student
from actors.trainers.teacher import TeacherConfig, TeacherWorker, teacher_topk

ENGINE = {"device": "cpu", "max_model_len": 128, "max_draft_nodes": 8, "adaptive_budget": False}


@pytest.fixture(scope="module")
def verifier(tmp_path_factory, make_tiny, tiny_tokenizer):
    path = tmp_path_factory.mktemp("trainers") / "verifier"
    make_tiny().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def prompts(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = [" ".join(f"t{rng.randrange(62)}" for _ in range(rng.randrange(3, 9))) for _ in range(n)]
    return [
        {"id": f"p{i}", "prompt": text, "split": "val" if i < 2 else "train"} for i, text in enumerate(words)
    ]


@pytest.fixture(scope="module")
def rows(verifier):
    worker = TeacherWorker(
        EngineConfig(model=verifier, **ENGINE), TeacherConfig(topk=4, max_new_tokens=12, chat=False)
    )
    return worker(prompts(10))


def test_teacher_rows_line_up_with_the_verifier(rows, verifier):
    engine = Engine(EngineConfig(model=verifier, drafter="none", **ENGINE))
    for row in rows:
        response = row["input_ids"][row["start"] + 1 :]
        assert len(row["topk_ids"]) == len(response) == 12
        # greedy: each response token is the verifier's most likely token at the position before it
        assert [top[0] for top in row["topk_ids"]] == response
        assert all(sum(p) <= 1 + 1e-5 and p == sorted(p, reverse=True) for p in row["topk_probs"])
    prompt = engine.encode(prompts(1)[0]["prompt"], chat=False)
    (plain,) = engine.generate([prompt], SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert rows[0]["input_ids"] == prompt + plain.token_ids
    ((ids, probs),) = teacher_topk(engine.model, [rows[0]["input_ids"]], [rows[0]["start"]], 4)
    full = engine.model(torch.tensor([rows[0]["input_ids"]])).logits[0, rows[0]["start"] : -1].softmax(-1)
    torch.testing.assert_close(probs, full.topk(4).values)


def test_on_policy_rows_come_from_the_student(verifier):
    teacher = TeacherConfig(topk=4, max_new_tokens=8, chat=False, lmbda=1.0, student_temperature=1.0)
    worker = TeacherWorker(EngineConfig(model=verifier, **ENGINE), teacher, StudentConfig(num_layers=1))
    out = worker(prompts(6))
    assert {row["source"] for row in out if row["split"] == "train"} == {"student"}
    assert {row["source"] for row in out if row["split"] == "val"} == {"verifier"}  # held out: greedy


def test_a_student_cut_from_every_verifier_layer_is_the_verifier(verifier, tmp_path):
    student, tokenizer = build_student(StudentConfig(layers=[0, 1]), verifier)
    path = save_student(student, tokenizer, tmp_path / "student")
    engine = Engine(EngineConfig(model=verifier, drafter=f"model:{path}", **ENGINE))
    ids = torch.tensor([engine.encode(prompts(1)[0]["prompt"], chat=False)])
    torch.testing.assert_close(engine.drafter_model(ids).logits, engine.model(ids).logits)
    one_layer, _ = build_student(StudentConfig(num_layers=1), verifier)
    torch.testing.assert_close(
        one_layer.model.layers[0].mlp.up_proj.weight, engine.model.model.layers[0].mlp.up_proj.weight
    )
    assert pick_layers(30, 4, "spread") == [0, 10, 19, 29] and pick_layers(30, 2) == [0, 1]
    with pytest.raises(ValueError, match="between 1 and 2"):
        build_student(StudentConfig(num_layers=3), verifier)


def test_collate_marks_the_positions_that_predict_the_response():
    row = {
        "input_ids": [5, 6, 7, 8, 9],
        "start": 2,
        "topk_ids": [[8, 1], [9, 2]],
        "topk_probs": [[0.9, 0.1]] * 2,
    }
    batch = collate([row, {**row, "input_ids": [5, 6, 7, 8]}])
    assert batch.mask.tolist() == [[False, False, True, True, False], [False, False, True, False, False]]
    assert batch.topk_ids[0, 3].tolist() == [9, 2] and batch.input_ids[1].tolist() == [5, 6, 7, 8, 0]


def test_rows_are_ordered_by_step_and_shared_between_workers():
    assert step_rows(10, 4, 3, seed=1) == step_rows(10, 4, 3, seed=1)
    epoch = [i for step in range(5) for i in step_rows(10, 2, step, seed=1)]
    assert sorted(epoch) == list(range(10))  # each row once per epoch
    shares = [step_rows(10, 4, 7, seed=1, rank=r, world=2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(step_rows(10, 4, 7, seed=1))


def test_chain_steps_counts_verifier_steps_of_greedy_chain_drafting():
    # depth 2: [hit hit] + bonus | [miss] + correction | [hit] + last token
    assert chain_steps([True, True, True, False, True, True], 2) == 3
    assert chain_steps([False] * 4, 8) == 4
    assert chain_steps([True] * 9, 8) == 1  # 8 accepted + the verifier's bonus token
    assert chain_steps([True] * 10, 8) == 2


def run(verifier, rows, folder, config, restore=None, make=Distiller):
    torch.manual_seed(0)
    student, tokenizer = build_student(StudentConfig(num_layers=1), verifier)
    distiller = make(student, config)
    if restore:
        distiller.restore(restore)
    reports = []
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    train(
        distiller,
        train_rows,
        val_rows,
        lambda m, f: reports.append((m, f)),
        lambda s: folder / f"s{s}",
        tokenizer,
    )
    return distiller, reports


def test_a_resumed_run_is_the_uninterrupted_run(verifier, rows, tmp_path):
    config = TrainConfig(
        max_steps=6, batch_size=3, log_every=1, checkpoint_every=3, learning_rate=1e-2, warmup_steps=2
    )
    whole, _ = run(verifier, rows, tmp_path / "whole", config)
    stopped, reports = run(verifier, rows, tmp_path / "part", TrainConfig(**{**vars(config), "stop_at": 3}))
    assert stopped.step == 3 and reports[-1][1] == tmp_path / "part" / "s3"
    resumed, later = run(verifier, rows, tmp_path / "rest", config, restore=tmp_path / "part" / "s3")
    assert [m["step"] for m, _ in later] == [3, 4, 5, 6] and {m["started_at"] for m, _ in later} == {3}
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert [m["loss"] for m in whole.history[4:]] == [m["loss"] for m in resumed.history[4:]]
    # a checkpoint is a drafter folder as it is
    engine = Engine(EngineConfig(model=verifier, drafter=f"model:{tmp_path / 'rest' / 's6'}", **ENGINE))
    assert engine.drafter_model is not None


@pytest.fixture(scope="module")
def process_group():
    """A one-worker gloo process group, like the one Ray Train gives each worker."""
    pytest.importorskip("deepspeed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env | {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}).items():
            patch.setenv(key, value)
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
        yield
        torch.distributed.destroy_process_group()


def zero2(student, config):
    from actors.trainers.zero import ZeroDistiller

    return ZeroDistiller(student, config, world=1)


def test_zero2_takes_the_ddp_steps_and_resumes_exactly(verifier, rows, tmp_path, process_group):
    config = TrainConfig(
        max_steps=6, batch_size=3, log_every=1, checkpoint_every=3, learning_rate=1e-2, warmup_steps=2
    )
    plain, _ = run(verifier, rows, tmp_path / "plain", config)
    whole, _ = run(verifier, rows, tmp_path / "whole", config, make=zero2)
    for name, value in plain.student.state_dict().items():  # same AdamW steps, same clipping
        torch.testing.assert_close(whole.student.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)

    stopped_config = TrainConfig(**{**vars(config), "stop_at": 3})
    stopped, _ = run(verifier, rows, tmp_path / "part", stopped_config, make=zero2)
    assert stopped.step == 3 and (tmp_path / "part" / "s3" / "deepspeed").is_dir()
    resumed, later = run(
        verifier, rows, tmp_path / "rest", config, restore=tmp_path / "part" / "s3", make=zero2
    )
    assert [m["step"] for m, _ in later] == [3, 4, 5, 6]
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=0, msg=name)
    # the weights are a drafter folder as they are; DDP refuses the partitioned optimizer state
    engine = Engine(EngineConfig(model=verifier, drafter=f"model:{tmp_path / 'rest' / 's6'}", **ENGINE))
    assert engine.drafter_model is not None
    with pytest.raises(ValueError, match="another workers.strategy"):
        run(verifier, rows, tmp_path / "ddp", config, restore=tmp_path / "rest" / "s6")


def test_checkpoint_restores_weights_and_optimizer_state(verifier, rows, tmp_path):
    config = TrainConfig(max_steps=2, batch_size=2, log_every=1, checkpoint_every=2)
    trained, _ = run(verifier, rows, tmp_path, config)
    student, _ = build_student(StudentConfig(num_layers=1), verifier)
    fresh = Distiller(student, config)
    state = load_checkpoint(tmp_path / "s2", fresh.student, fresh.optimizer)
    assert state["step"] == 2
    for param, slots in trained.optimizer.state.items():
        twin = dict(fresh.student.named_parameters())[
            [n for n, p in trained.student.named_parameters() if p is param][0]
        ]
        for key, value in slots.items():
            torch.testing.assert_close(fresh.optimizer.state[twin][key], value)

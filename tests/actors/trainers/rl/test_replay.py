"""Replay drafts in the RL loop (``rollout.replay``): with a finite training set and coupled seeds,
each sample is drafted from its previous rollout; with the weights unchanged that chain is
accepted whole, and with learning on the run is token for token the run without replay."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.trainers.rl.config import RolloutConfig
from actors.trainers.rl.loop import RLRun, backfilled
from tests.actors.trainers.rl.test_loop import LocalEngines, loop_config
from tests.pipelines.batch.fixtures import save_tiny_chat_model

NODES = 8
REPLAY = RolloutConfig(
    n=4, problems_per_step=4, max_new_tokens=24, seed_mode="coupled", train_problems=4, replay=True
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    return save_tiny_chat_model(tmp_path_factory.mktemp("rl-replay") / "policy", make_tiny, tiny_tokenizer)


def start(model_dir, rollout: RolloutConfig, steps: int = 3) -> tuple[RLRun, LocalEngines]:
    cfg = loop_config(model_dir, rollout=rollout, steps=steps)
    torch.manual_seed(cfg.seed)
    run = RLRun(cfg, rank=0, world=1, device=torch.device("cpu"))
    config = EngineConfig(
        model=cfg.model,
        drafter="ngram",
        max_batch_size=16,
        max_model_len=128,
        max_draft_nodes=NODES,
        max_draft_depth=NODES,
        adaptive_budget=False,  # drafts are free: a chain the verifier accepts is taken whole
    )
    engines = LocalEngines(Engine(config))
    engines.load_weights(run.trainer.sync_state(), run.step)
    return run, engines


def rollout_twice_with_the_same_weights(run: RLRun, engines: LocalEngines) -> tuple[list, list]:
    """Step 0's rollout, then step 1's on the same weights (what a learning rate of 0 gives)."""
    before = run.rollout(engines)[0]
    run.step = 1
    engines.load_weights(run.trainer.sync_state(), 1)
    return before, run.rollout(engines)[0]


def test_replay_needs_coupled_seeds_and_a_finite_training_set():
    with pytest.raises(ValueError, match="seed_mode=coupled"):
        RolloutConfig(replay=True, train_problems=8)
    with pytest.raises(ValueError, match="train_problems > 0"):
        RolloutConfig(replay=True, seed_mode="coupled")
    with pytest.raises(ValueError, match="train_problems=2"):
        RolloutConfig(problems_per_step=4, train_problems=2)


def test_a_finite_training_set_cycles_through_its_problems(chat_model_dir):
    run, _ = start(chat_model_dir, dataclasses.replace(REPLAY, train_problems=6))
    assert [run.problem_index(draw) for draw in range(8)] == [0, 1, 2, 3, 4, 5, 0, 1]
    infinite, _ = start(chat_model_dir, dataclasses.replace(REPLAY, train_problems=0, replay=False))
    assert infinite.problem_index(8) == 8


def test_with_the_weights_unchanged_the_replay_is_accepted_whole(chat_model_dir):
    run, engines = start(chat_model_dir, REPLAY)
    before, after = rollout_twice_with_the_same_weights(run, engines)
    assert [s.problem.index for s in after] == [s.problem.index for s in before]  # the epoch came round
    assert [s.token_ids for s in after] == [s.token_ids for s in before]  # coupled seeds
    for sample in after:
        assert sample.steps <= math.ceil(len(sample.token_ids) / NODES) + 1, sample
    assert len(run.replay) == REPLAY.problems_per_step * REPLAY.n

    plain, engines = start(chat_model_dir, dataclasses.replace(REPLAY, replay=False))
    _, without = rollout_twice_with_the_same_weights(plain, engines)
    assert [s.token_ids for s in without] == [s.token_ids for s in after]
    assert sum(s.steps for s in after) < sum(s.steps for s in without)


def test_a_learning_run_is_the_same_with_and_without_replay(chat_model_dir):
    runs = {}
    for replay in (True, False):
        run, engines = start(chat_model_dir, dataclasses.replace(REPLAY, replay=replay))
        history = [run.step_once(engines, None) for _ in range(run.cfg.steps)]
        runs[replay] = (run, history, run.rollout(engines)[0])
    (with_replay, history, samples), (without, plain_history, plain_samples) = runs[True], runs[False]
    assert [s.token_ids for s in samples] == [s.token_ids for s in plain_samples]
    for key in ("reward/mean", "completions/mean_length", "entropy"):
        assert [h[key] for h in history] == [h[key] for h in plain_history], key
    weights, plain_weights = with_replay.trainer.policy.state_dict(), without.trainer.policy.state_dict()
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)


def test_a_run_saved_before_replay_existed_resumes():
    before = {"rollout": {"n": 4, "seed_mode": "fresh"}, "steps": 3}
    assert backfilled(before) == {
        "rollout": {"n": 4, "seed_mode": "fresh", "train_problems": 0, "replay": False},
        "steps": 3,
    }
    newer = {"rollout": {"n": 4, "train_problems": 8, "replay": True}}
    assert backfilled(newer) == newer
    assert backfilled({"algorithm": {}}) == {"algorithm": {}} and backfilled(None) is None

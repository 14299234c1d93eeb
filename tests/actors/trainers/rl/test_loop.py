"""The RL loop in one process, on a tiny random model and the real engine: the policy learns a toy
reward, the engine's log-probs are the trainer's, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.trainers.rl.config import OptimConfig, RolloutConfig, TaskConfig
from actors.trainers.rl.loop import LoopConfig, RLRun
from tests.pipelines.batch.fixtures import save_tiny_chat_model


class LocalEngines:
    """The loop's view of the engines (``generate``, ``load_weights``) over one in-process engine."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(self, prompts, params):
        return self.engine.generate(prompts, params)

    def load_weights(self, state_dict, version) -> float:
        self.engine.load_weights(state_dict, version)
        return 0.0


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    return save_tiny_chat_model(tmp_path_factory.mktemp("rl") / "policy", make_tiny, tiny_tokenizer)


def loop_config(model_dir, **changes) -> LoopConfig:
    cfg = LoopConfig(
        model=str(model_dir),
        engines=[],
        task=TaskConfig("token_share", {"target": "t7"}),
        rollout=RolloutConfig(n=4, problems_per_step=4, max_new_tokens=12),
        optim=OptimConfig(lr=2e-2, micro_batch_size=8),
        steps=30,
        seed=3,
    )
    return dataclasses.replace(cfg, **changes)


def start(cfg: LoopConfig, drafter: str = "ngram") -> tuple[RLRun, LocalEngines]:
    torch.manual_seed(cfg.seed)
    run = RLRun(cfg, rank=0, world=1, device=torch.device("cpu"))
    engine = Engine(EngineConfig(model=cfg.model, drafter=drafter, max_batch_size=16, max_model_len=128))
    engines = LocalEngines(engine)
    engines.load_weights(run.trainer.sync_state(), run.step)
    return run, engines


def test_a_tiny_policy_learns_a_toy_reward(chat_model_dir):
    run, engines = start(loop_config(chat_model_dir))
    history = [run.step_once(engines, None) for _ in range(run.cfg.steps)]
    first = sum(h["reward/mean"] for h in history[:3]) / 3
    last = sum(h["reward/mean"] for h in history[-3:]) / 3
    assert last > first + 0.2, [round(h["reward/mean"], 3) for h in history]
    # the engine sampled with the weights the trainer scored: float32 agreement
    assert max(h["rollout_train_logprob_diff/max"] for h in history) < 1e-3
    assert [h["policy_version"] for h in history] == list(range(1, run.cfg.steps + 1))


def test_a_resumed_run_equals_an_uninterrupted_one(chat_model_dir, tmp_path):
    cfg = loop_config(chat_model_dir, steps=4)
    straight, engines = start(cfg)
    for _ in range(4):
        straight.step_once(engines, None)

    first, engines = start(cfg)
    for _ in range(2):
        first.step_once(engines, None)
    folder = first.save(tmp_path / "step_2")
    resumed, engines = start(cfg)  # fresh trainer and engine, as after a restart
    resumed.restore(folder)
    engines.load_weights(resumed.trainer.sync_state(), resumed.step)
    for _ in range(2):
        resumed.step_once(engines, None)
    assert [h["reward/mean"] for h in resumed.history] == [h["reward/mean"] for h in straight.history]
    final, expected = resumed.trainer.policy.state_dict(), straight.trainer.policy.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_resume_with_other_settings_is_refused(chat_model_dir, tmp_path):
    cfg = loop_config(chat_model_dir, steps=1, expanded={"algorithm": {"clip_ratio_high": 0.2}})
    run, engines = start(cfg)
    run.step_once(engines, None)
    folder = run.save(tmp_path / "step_1")
    other, _ = start(dataclasses.replace(cfg, expanded={"algorithm": {"clip_ratio_high": 0.28}}))
    with pytest.raises(ValueError, match="other settings"):
        other.restore(folder)


def test_stale_weights_are_detected(chat_model_dir):
    run, engines = start(loop_config(chat_model_dir, steps=2))
    engines.load_weights({}, 7)  # the engine says it holds another version
    with pytest.raises(RuntimeError, match="policy version"):
        run.step_once(engines, None)

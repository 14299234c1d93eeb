"""The preference loop in one process, on a tiny random model and the real engine: reference
log-probs are a teacher-forced forward's, a policy learns synthetic pairs, the step does not
depend on the micro-batch size, on-policy rounds sync the engines, a resume equals a straight run."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.trainers.preference.config import LossConfig, SamplingConfig, TrainConfig
from actors.trainers.preference.loop import LoopConfig, PreferenceRun
from actors.trainers.preference.pairs import Pair, attach_reference
from actors.trainers.rl.config import TaskConfig
from actors.trainers.rl.tasks import TASKS, Problem, Score, register_task
from actors.trainers.rl.tasks.base import problem_rng
from pipelines.preference.evaluate import pair_accuracy
from tests.pipelines.batch.fixtures import save_tiny_chat_model

EOS = 62


if "first_word_even" not in TASKS:

    @register_task("first_word_even")
    @dataclass
    class FirstWordEven:
        """A test task a random model gets right about half the time: the completion's first word
        must be ``t<even>``."""

        def problem(self, seed: int, index: int) -> Problem:
            rng = problem_rng(self.name, seed, index)
            return Problem(self.name, index, " ".join(f"t{rng.randrange(60)}" for _ in range(4)), "even")

        def score(self, problem: Problem, completion: str) -> Score:
            words = completion.split()
            ok = bool(words) and words[0][1:].isdigit() and int(words[0][1:]) % 2 == 0
            return Score(reward=float(ok), correct=ok, lenient=ok, formatted=bool(words))


class LocalEngines:
    """The loop's view of the engines (``generate``, ``score``, ``load_weights``) over one
    in-process engine."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(self, prompts, params):
        return self.engine.generate(prompts, params)

    def score(self, prompts, completions):
        return self.engine.score(prompts, completions, 1.0)

    def load_weights(self, state_dict, version) -> float:
        self.engine.load_weights(state_dict, version)
        return 0.0


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny):
    return save_tiny_chat_model(tmp_path_factory.mktemp("preference") / "policy", make_tiny, tiny_tokenizer)


def engine_of(model_dir) -> LocalEngines:
    return LocalEngines(
        Engine(EngineConfig(model=str(model_dir), drafter="ngram", max_batch_size=16, max_model_len=128))
    )


def synthetic_pairs(count: int, seed: int) -> list[Pair]:
    """Prompts of random words; the chosen completion is three words of ``t0``..``t9``, the
    rejected three of ``t10``..``t19``."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        prompt = [rng.randrange(60) for _ in range(5)]
        chosen = [rng.randrange(10) for _ in range(3)] + [EOS]
        rejected = [10 + rng.randrange(10) for _ in range(3)] + [EOS]
        pairs.append(Pair(prompt, chosen, rejected, "dataset", index))
    return pairs


#: metrics every step reports (TRL's names)
STEP_METRICS = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"}


def loop_config(model_dir, **changes) -> LoopConfig:
    cfg = LoopConfig(
        model=str(model_dir),
        engines=[],
        task=TaskConfig("first_word_even"),
        sampling=SamplingConfig(n=4, problems_per_round=8, max_new_tokens=6),
        loss=LossConfig(),
        train=TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=2),
        seed=5,
    )
    return dataclasses.replace(cfg, **changes)


def start(cfg: LoopConfig) -> tuple[PreferenceRun, LocalEngines]:
    torch.manual_seed(cfg.seed)
    return PreferenceRun(cfg, rank=0, world=1, device=torch.device("cpu")), engine_of(cfg.model)


def drive(run: PreferenceRun, engines, stop_at: int | None = None) -> None:
    """What ``train_loop_per_worker`` does, without Ray; stops (as a crash would) after step ``stop_at``."""
    while run.round < run.cfg.rounds:
        for _ in run.round_steps(engines, None):
            if run.step == stop_at:
                return


def test_reference_logprobs_from_the_engine_equal_a_teacher_forced_forward(chat_model_dir, make_tiny):
    pairs = attach_reference(synthetic_pairs(6, seed=1), engine_of(chat_model_dir).score)
    model = make_tiny(seed=0)  # the weights saved in chat_model_dir
    for pair in pairs:
        for completion, stored in (
            (pair.chosen_ids, pair.ref_chosen_logp),
            (pair.rejected_ids, pair.ref_rejected_logp),
        ):
            ids = torch.tensor([pair.prompt_ids + completion])
            logits = model(input_ids=ids).logits[0, len(pair.prompt_ids) - 1 : -1].float()
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).sum()
            assert stored == pytest.approx(float(expected), abs=1e-4)


def test_a_tiny_policy_learns_synthetic_pairs(chat_model_dir):
    engines = engine_of(chat_model_dir)
    train = [p.to_dict() for p in attach_reference(synthetic_pairs(64, seed=2), engines.score)]
    held_out = attach_reference(synthetic_pairs(48, seed=3), engines.score)
    cfg = loop_config(
        chat_model_dir, pairs=train, train=TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=8, epochs=4)
    )
    run, _ = start(cfg)
    loss = LossConfig()
    start_accuracy = pair_accuracy(
        held_out, engines.score, dataclasses.replace(loss, loss_type="simpo", beta=1.0)
    )
    drive(run, engines)
    assert run.step == 32 and run.history[-1]["rewards/accuracies"] > 0.9
    end = pair_accuracy(held_out, engines.score, loss)  # the engine holds the final policy
    assert end["pair_accuracy"] > 0.9, end
    # the base model's own preference (length-normalised log-probs) was near chance
    assert start_accuracy["pair_accuracy"] < 0.75, start_accuracy
    assert engines.engine.policy_version == 1


def test_the_step_does_not_depend_on_the_micro_batch_size(chat_model_dir):
    engines = engine_of(chat_model_dir)
    pairs = [p.to_dict() for p in attach_reference(synthetic_pairs(8, seed=4), engines.score)]
    steps = []
    for micro in (1, 3, 8):  # 3: micro-batches of unequal size
        train = TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=micro)
        run, _ = start(loop_config(chat_model_dir, pairs=pairs, train=train, loss=LossConfig(rpo_alpha=0.5)))
        drive(run, None)
        steps.append(run.history[0])
    for key in ("loss", "nll_loss", "grad_norm", "rewards/margins", "logps/chosen"):
        assert (
            steps[0][key] == pytest.approx(steps[1][key], rel=1e-5) == pytest.approx(steps[2][key], rel=1e-5)
        )


def test_on_policy_rounds_sample_from_the_synced_policy(chat_model_dir):
    run, engines = start(loop_config(chat_model_dir, rounds=2))
    drive(run, engines)
    rounds = {h["round"] for h in run.history}
    assert rounds == {0, 1} and engines.engine.policy_version == 2
    first = next(h for h in run.history if h["round"] == 0)
    assert (
        first["pairs/groups"] == 8
        and first["pairs/total"] == first["pairs/correctness"] + first["pairs/length"]
    )
    assert 0 <= first["pairs/skipped_groups"] < 8
    assert set(first) >= STEP_METRICS
    assert [h["policy_version"] for h in run.history] == [h["round"] for h in run.history]


@pytest.mark.parametrize("where", ["end of round 0", "inside round 1"])
def test_a_resumed_run_equals_an_uninterrupted_one(where, chat_model_dir, tmp_path):
    cfg = loop_config(chat_model_dir, rounds=2, train=TrainConfig(lr=1e-2, batch_size=1, micro_batch_size=1))
    straight, engines = start(cfg)
    drive(straight, engines)
    first_round = sum(h["round"] == 0 for h in straight.history)
    stop = first_round if where == "end of round 0" else first_round + 1
    assert stop < straight.step, "round 1 must have at least two steps"

    broken, engines = start(cfg)
    drive(broken, engines, stop_at=stop)
    folder = broken.save(tmp_path / "checkpoint")
    resumed, engines = start(cfg)  # a fresh trainer and a fresh engine (version 0), as after a restart
    resumed.restore(folder)
    drive(resumed, engines)
    assert [h["step"] for h in resumed.history] == list(range(1, straight.step + 1))
    for key in ("loss", "rewards/margins", "pairs/total", "completions/mean_length"):
        assert [h[key] for h in resumed.history] == [h[key] for h in straight.history], key
    final, expected = resumed.trainer.policy.state_dict(), straight.trainer.policy.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_resume_with_other_settings_is_refused(chat_model_dir, tmp_path):
    cfg = loop_config(chat_model_dir, expanded={"loss": {"beta": 0.1}})
    run, engines = start(cfg)
    drive(run, engines, stop_at=1)
    folder = run.save(tmp_path / "step_1")
    other, _ = start(dataclasses.replace(cfg, expanded={"loss": {"beta": 0.2}}))
    with pytest.raises(ValueError, match="other settings"):
        other.restore(folder)


def test_a_round_too_small_to_train_is_named(chat_model_dir):
    run, engines = start(loop_config(chat_model_dir, train=TrainConfig(batch_size=64, micro_batch_size=8)))
    with pytest.raises(ValueError, match="train.batch_size=64"):
        drive(run, engines)

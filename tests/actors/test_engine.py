"""Engine behaviour users rely on: limits, stop strings, seeds, mixed batches, clear errors."""

import pytest

from actors.drafters.model import ModelDrafter
from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from tests.actors.test_lossless import plain_greedy

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def self_drafting_engine(tiny_lm, **config):
    """Drafts with the verifier itself, so every step accepts its whole chain (5 tokens)."""
    drafter = ModelDrafter(tiny_lm.model, 8, 256, branching=1, threshold=0.0)
    settings = dict(max_model_len=256, max_draft_nodes=4, max_draft_depth=4, adaptive_budget=False)
    return Engine(EngineConfig(device="cpu", **(settings | config)), tiny_lm, drafter)


def test_max_new_tokens_is_exact_when_a_step_accepts_more(tiny_lm):
    engine = self_drafting_engine(tiny_lm)
    (result,) = engine.generate([PROMPT], SamplingParams(max_new_tokens=7, ignore_eos=True))
    assert len(result.token_ids) == 7 and result.finish_reason == "length"
    assert result.stats.steps == 2  # 5 + 2 of the next 5


def test_stop_string_ends_generation_and_is_cut(tiny_lm):
    engine = self_drafting_engine(tiny_lm)
    (full,) = engine.generate([PROMPT], SamplingParams(max_new_tokens=12, ignore_eos=True))
    stop = full.text.split()[3]
    (result,) = engine.generate([PROMPT], SamplingParams(max_new_tokens=12, ignore_eos=True, stop=(stop,)))
    assert result.finish_reason == "stop"
    assert stop not in result.text and full.text.startswith(result.text)


def test_seeded_sampling_reproduces_and_mixes_with_greedy(tiny_lm):
    """A seed reproduces a sample given the same drafter state (a fresh engine); drafts change
    which random numbers are drawn, never the distribution. Greedy requests in the same batch
    are unaffected by sampled neighbours."""
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, seed=7, ignore_eos=True)
    greedy = SamplingParams(max_new_tokens=16, ignore_eos=True)
    runs = [
        Engine(EngineConfig(device="cpu", max_model_len=256, max_batch_size=2), tiny_lm).generate(
            [PROMPT, PROMPT], [sampled, greedy]
        )
        for _ in range(2)
    ]
    assert runs[0][0].token_ids == runs[1][0].token_ids
    alone = Engine(EngineConfig(device="cpu", max_model_len=256), tiny_lm).generate([PROMPT], greedy)
    assert runs[0][1].token_ids == alone[0].token_ids


def test_requests_beyond_the_batch_size_wait_and_finish(tiny_lm):
    """Five requests through two KV slots: the three that wait get their own full answer, in
    prompt order, as if each had run alone."""
    batch = [PROMPT[: i + 2] for i in range(5)]
    expected = [plain_greedy(tiny_lm.model, prompt, 6) for prompt in batch]  # before an engine swaps layers
    engine = Engine(EngineConfig(device="cpu", max_model_len=256, max_batch_size=2), tiny_lm)
    results = engine.generate(batch, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    assert [r.finish_reason for r in results] == ["length"] * 5
    assert all(r.stats.steps > 0 for r in results)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [([[]], "prompt is empty"), ([list(range(60)) * 5], "max_model_len=256")],
)
def test_bad_prompts_are_rejected(tiny_lm, prompts, message):
    engine = Engine(EngineConfig(device="cpu", max_model_len=256), tiny_lm)
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts)

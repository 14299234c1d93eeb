"""Log-probs of committed tokens equal a teacher-forced forward of the untouched model for every
drafter, and so does ``Engine.score``; seeded rollouts are token-identical across drafters; stop
strings cut ``token_ids`` and ``logprobs`` with ``text``; the strict room check refuses up front."""

import asyncio
import copy
import math
import random

import pytest
import torch

from actors.drafters.heads import HeadsDrafter, MedusaHeads
from actors.drafters.model import ModelDrafter
from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams, Verdict
from actors.models import LoadedModel
from actors.requests import Request
from actors.verifiers.acceptance import token_logprobs
from tests.conftest import make_tiny_model

ENGINE = dict(device="cpu", max_batch_size=4, max_model_len=256, max_draft_nodes=8, adaptive_budget=False)
#: ``model``: a second tiny model; ``self``: a model drafter over a copy of the verifier, whose
#: drafts are mostly accepted (deep paths: the log-prob of a token chosen by row 1 + node)
DRAFTERS = ["none", "ngram", "model", "self", "heads"]
NEW_TOKENS = 24
#: greedy, then seeded sampling at temperature 1 (twice, other seeds), for every prompt
PARAMS = [
    SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True),
    SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True, temperature=1.0, seed=11),
    SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True, temperature=1.0, seed=12),
]


def make_prompts(count: int = 3, seed: int = 0) -> list[list[int]]:
    """Ragged prompts with a repeated motif, so the n-gram drafter finds matches."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        motif = [rng.randrange(62) for _ in range(3)]
        out.append(motif * (2 + i) + [rng.randrange(62) for _ in range(1 + 3 * i)])
    return out


def random_heads(hidden_size: int, num_heads: int = 3, seed: int = 0) -> MedusaHeads:
    torch.manual_seed(seed)
    heads = MedusaHeads(hidden_size, num_heads)
    for block in heads.blocks:
        torch.nn.init.normal_(block.weight, std=0.5)
    return heads


def forward_logprobs(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """``[len(tokens)]`` log_softmax(logits / T) (T = 1 for greedy) of ``tokens`` after ``prompt``,
    from one plain Hugging Face forward of ``model``."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
    logits = logits / (temperature or 1.0)
    return logits.log_softmax(-1).gather(-1, torch.tensor(tokens).view(-1, 1)).view(-1)


def build_engine(drafter: str, tokenizer, **overrides) -> tuple[Engine, torch.nn.Module]:
    """An engine over a fresh tiny verifier, and an untouched copy of that verifier (the engine
    fuses and swaps its layers in place)."""
    model = make_tiny_model()
    reference = copy.deepcopy(model)
    config = EngineConfig(
        **ENGINE | overrides | {"drafter": drafter if drafter in ("none", "ngram") else "none"}
    )
    custom = None
    if drafter in ("model", "self"):
        draft = make_tiny_model(seed=1, layers=1) if drafter == "model" else copy.deepcopy(model)
        custom = ModelDrafter(draft, ENGINE["max_batch_size"], 256)
    elif drafter == "heads":
        custom = HeadsDrafter(random_heads(model.config.hidden_size), model.lm_head)
    return Engine(config, LoadedModel(model, tokenizer, "tiny"), custom), reference


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tiny_tokenizer):
    """drafter → (engine, untouched verifier, prompts, params, results), one batch mixing greedy
    and sampled requests."""
    out = {}
    prompts = make_prompts()
    batch = [(p, params) for p in prompts for params in PARAMS]
    for drafter in DRAFTERS:
        engine, reference = build_engine(drafter, tiny_tokenizer)
        results = engine.generate([p for p, _ in batch], [params for _, params in batch])
        out[drafter] = (engine, reference, batch, results)
    return out


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_logprobs_equal_a_teacher_forced_forward(runs, drafter):
    engine, reference, batch, results = runs[drafter]
    for (prompt, params), result in zip(batch, results):
        assert len(result.token_ids) == NEW_TOKENS and len(result.logprobs) == NEW_TOKENS
        expected = forward_logprobs(reference, prompt, result.token_ids, params.temperature)
        torch.testing.assert_close(torch.tensor(result.logprobs), expected, atol=1e-4, rtol=0)
        assert result.policy_version == 0
    if drafter != "none":
        assert all(r.stats.drafted > 0 for r in results)
    if drafter in ("ngram", "self"):  # drafts were accepted: rows past the first chose tokens
        assert sum(r.stats.accepted for r in results) > 2 * len(results)


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_score_equals_the_forward_and_the_rollout_logprobs(runs, drafter):
    engine, reference, batch, results = runs[drafter]
    for temperature in (0.0, 1.0):
        picked = [(p, r) for (p, params), r in zip(batch, results) if params.temperature == temperature]
        scores = engine.score([p for p, _ in picked], [r.token_ids for _, r in picked], temperature)
        for (prompt, result), score in zip(picked, scores):
            expected = forward_logprobs(reference, prompt, result.token_ids, temperature)
            torch.testing.assert_close(torch.tensor(score), expected, atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.tensor(score), torch.tensor(result.logprobs), atol=1e-4, rtol=0)


def test_seeded_rollouts_are_token_identical_across_drafters(runs):
    tokens = {d: [r.token_ids for r in runs[d][3]] for d in DRAFTERS}
    for drafter in DRAFTERS[1:]:
        assert tokens[drafter] == tokens["none"], drafter
    assert len({tuple(t) for t in tokens["none"]}) == len(tokens["none"])  # the seeds differ


def test_score_batches_ragged_and_empty_completions(runs):
    engine, reference, _, _ = runs["none"]
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11]]
    completions = [[7, 8, 9, 10], [], [1]]
    scores = engine.score(prompts, completions, temperature=0.7)
    assert scores[1] == []
    for prompt, completion, score in zip(prompts, completions, scores):
        if completion:
            expected = forward_logprobs(reference, prompt, completion, 0.7)
            torch.testing.assert_close(torch.tensor(score), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.score([[]], [[1]])
    with pytest.raises(ValueError, match="outside"):
        engine.score([[1]], [[64]])


def test_no_logprobs_unless_asked(runs):
    engine = runs["ngram"][0]
    (result,) = engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert result.logprobs is None


def test_truncated_sampling_logprobs_are_the_renormalised_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    top2 = SamplingParams(temperature=1.0, top_k=2)
    assert token_logprobs(logits, [1], top2)[0] == pytest.approx(1.0 - math.log(math.e**2 + math.e))
    assert token_logprobs(logits, [0], SamplingParams())[0] == pytest.approx(
        float(logits.log_softmax(-1)[0, 0])
    )
    half = SamplingParams(temperature=2.0)
    assert token_logprobs(logits, [3], half)[0] == pytest.approx(float((logits / 2).log_softmax(-1)[0, 3]))


# -- stop strings ------------------------------------------------------------------------------


def verdict(tokens: list[int]) -> Verdict:
    return Verdict(0, tokens, [], 0, token_logprobs=[-float(t) for t in tokens])


def stopped(tokenizer, stop: tuple[str, ...], *steps: list[int]) -> Request:
    request = Request(0, [1], SamplingParams(stop=stop, logprobs=True))
    for tokens in steps:
        assert not request.done
        request.extend(verdict(tokens), {62}, tokenizer)
    return request


def test_stop_string_cuts_token_ids_and_logprobs_at_the_token_that_completes_it(tiny_tokenizer):
    request = stopped(tiny_tokenizer, ("t3 t4",), [1, 2, 3, 4, 5, 6])  # one step commits past it
    assert request.token_ids == [1, 2, 3, 4] and request.logprobs == [-1.0, -2.0, -3.0, -4.0]
    assert request.text == "t1 t2 " and request.finish_reason == "stop"
    assert request.stats.new_tokens == 4
    decoded = tiny_tokenizer.decode(request.token_ids)
    assert decoded[: decoded.find("t3 t4")] == request.text


def test_stop_string_inside_a_token_and_across_steps(tiny_tokenizer):
    request = stopped(tiny_tokenizer, ("1 t",), [1, 2, 3])  # starts inside "t1", ends inside "t2"
    assert (request.token_ids, request.text) == ([1, 2], "t")
    request = stopped(tiny_tokenizer, ("2 t3",), [1, 2], [3, 4])  # completed by step 2's first token
    assert (request.token_ids, request.logprobs, request.text) == ([1, 2, 3], [-1.0, -2.0, -3.0], "t1 t")
    request = stopped(tiny_tokenizer, ("t5",), [1, 2], [3, 4], [5, 6, 7])
    assert request.token_ids == [1, 2, 3, 4, 5] and request.text == "t1 t2 t3 t4 "


def test_the_stop_string_completed_first_ends_generation(tiny_tokenizer):
    """As plain decoding would: a longer stop string that starts earlier but is completed later
    does not count, whatever a step commits at once."""
    request = stopped(tiny_tokenizer, ("t2 t3 t4 t5", "t4"), [1, 2, 3, 4, 5, 6])
    assert request.token_ids == [1, 2, 3, 4] and request.text == "t1 t2 t3 "
    one_by_one = stopped(tiny_tokenizer, ("t2 t3 t4 t5", "t4"), [1], [2], [3], [4])
    assert (one_by_one.token_ids, one_by_one.text) == (request.token_ids, request.text)


def test_engine_stop_strings_keep_tokens_logprobs_and_text_consistent(runs, tiny_tokenizer):
    engine = runs["ngram"][0]
    prompt = make_prompts()[0]
    plain = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True, temperature=1.0, seed=5)
    (full,) = engine.generate([prompt], plain)
    stop = tiny_tokenizer.decode(full.token_ids[6:8])  # two tokens from the middle
    cut_params = SamplingParams(**{**vars(plain), "stop": (stop,)})
    (cut,) = engine.generate([prompt], cut_params)
    end = next(k for k in range(1, NEW_TOKENS + 1) if stop in tiny_tokenizer.decode(full.token_ids[:k]))
    assert cut.finish_reason == "stop"
    assert cut.token_ids == full.token_ids[:end]
    # another run, other trees: the same log-probs up to float rounding
    torch.testing.assert_close(
        torch.tensor(cut.logprobs), torch.tensor(full.logprobs[:end]), atol=1e-4, rtol=0
    )
    decoded = tiny_tokenizer.decode(cut.token_ids)
    assert cut.text == decoded[: decoded.find(stop)]

    async def streamed():
        return [update async for update in engine.stream(prompt, cut_params)]

    updates = asyncio.run(streamed())
    assert [t for u in updates for t in u.token_ids] == cut.token_ids
    streamed_logprobs = torch.tensor([p for u in updates for p in u.logprobs])
    torch.testing.assert_close(streamed_logprobs, torch.tensor(cut.logprobs), atol=1e-4, rtol=0)
    assert "".join(u.text for u in updates) == cut.text


# -- the strict room check ---------------------------------------------------------------------


def test_require_full_length_refuses_up_front(tiny_tokenizer):
    engine, _ = build_engine("ngram", tiny_tokenizer, max_model_len=64)  # max_draft_nodes 8
    prompt = list(range(10))
    loose = SamplingParams(max_new_tokens=50, ignore_eos=True)
    (short,) = engine.generate([prompt], loose)  # today's behaviour: cut short by the cache
    assert short.finish_reason == "length" and len(short.token_ids) < 50
    strict = SamplingParams(max_new_tokens=50, ignore_eos=True, require_full_length=True)
    with pytest.raises(
        ValueError, match=r"10\) \+ max_new_tokens \(50\) .* = 69 tokens exceed max_model_len=64"
    ):
        engine.generate([[1, 2], prompt], [loose, strict])
    assert engine.num_waiting == 0  # nothing was queued
    fits = SamplingParams(max_new_tokens=45, ignore_eos=True, require_full_length=True)  # 10 + 45 + 9 = 64
    (full,) = engine.generate([prompt], fits)
    assert len(full.token_ids) == 45 and full.finish_reason == "length"

"""Draft hints through the engine (``SamplingParams.draft_hint``): a seeded rollout replayed from
its own previous output is accepted whole, in at most ceil(L / max_draft_nodes) + 1 verifier
steps, with any drafter beside it; any hint, right, half right or garbage, leaves the tokens and
log-probs as they were; a drafter re-seeded mid-request gets the rest of the hint."""

import math
from dataclasses import replace

import pytest
import torch

from actors.drafters.link import DrafterUnavailable, LocalDrafter
from actors.drafters.model import ModelDrafter
from actors.drafters.ngram import NgramDrafter
from actors.drafters.replay import ReplayDrafter
from actors.drafters.worker import DrafterWorker
from actors.engine import Engine, EngineConfig
from actors.messages import DraftCall, SamplingParams
from actors.models import LoadedModel
from actors.requests import Request
from tests.conftest import make_tiny_model

NODES = 8
LENGTH = 60
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [3, 3, 4, 3, 3, 4, 3]]
#: two sampled requests (temperature 1, seeded) and one greedy
PARAMS = [
    SamplingParams(max_new_tokens=LENGTH, ignore_eos=True, temperature=1.0, seed=3, logprobs=True),
    SamplingParams(max_new_tokens=LENGTH, ignore_eos=True, temperature=1.0, seed=4, logprobs=True),
    SamplingParams(max_new_tokens=LENGTH, ignore_eos=True, logprobs=True),
]
#: what the hint is merged with: the n-gram drafter (steps drafted ahead or not), a model
#: drafter, or nothing (the hint alone)
DRAFTERS = ["ngram", "ngram-async", "model", "hint-only"]


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_lm(tokenizer) -> LoadedModel:
    """The same tiny verifier (seed 0) each time, untouched by any earlier engine."""
    return LoadedModel(make_tiny_model(), tokenizer, "tiny")


def build(drafter: str, tokenizer, **overrides) -> Engine:
    settings = dict(device="cpu", max_batch_size=4, max_model_len=256, max_draft_nodes=NODES)
    settings |= dict(
        max_draft_depth=NODES, adaptive_budget=False, async_speculation=drafter.endswith("async")
    )
    custom = {
        "ngram": NgramDrafter,
        "ngram-async": NgramDrafter,
        "model": lambda: ModelDrafter(make_tiny_model(seed=1, layers=1), 4, 256),
        "hint-only": lambda: ReplayDrafter(None),
    }[drafter]()
    return Engine(EngineConfig(**settings | overrides), fresh_lm(tokenizer), custom)


def with_hints(hints: list[list[int]]) -> list[SamplingParams]:
    return [replace(params, draft_hint=hint) for params, hint in zip(PARAMS, hints)]


def assert_same(results, expected) -> None:
    for result, before in zip(results, expected, strict=True):
        assert result.token_ids == before.token_ids
        torch.testing.assert_close(
            torch.tensor(result.logprobs), torch.tensor(before.logprobs), atol=1e-4, rtol=0
        )


@pytest.fixture(scope="module")
def plain(tiny_tokenizer):
    """The rollouts without hints: the same for every drafter (lossless), so drafted once."""
    return build("ngram", tiny_tokenizer).generate(PROMPTS, PARAMS)


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_a_rollout_replayed_from_its_own_output_is_accepted_whole(tiny_tokenizer, plain, drafter):
    engine = build(drafter, tiny_tokenizer)
    replayed = engine.generate(PROMPTS, with_hints([r.token_ids for r in plain]))
    assert_same(replayed, plain)
    for result in replayed:
        assert result.stats.steps <= math.ceil(LENGTH / NODES) + 1, result.stats
    assert sum(r.stats.steps for r in replayed) < sum(r.stats.steps for r in plain)


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_a_wrong_hint_changes_nothing_but_the_steps(tiny_tokenizer, plain, drafter):
    engine = build(drafter, tiny_tokenizer)
    garbage = engine.generate(PROMPTS, with_hints([[61] * LENGTH] * len(PROMPTS)))
    assert_same(garbage, plain)
    # right for 20 tokens, then wrong: replayed up to there, drafted as usual after
    half = [r.token_ids[:20] + [(t + 1) % 62 for t in r.token_ids[20:]] for r in plain]
    halves = engine.generate(PROMPTS, with_hints(half))
    assert_same(halves, plain)
    for result in halves:
        assert result.stats.accepted >= 20 - NODES  # the prefix went through the chain


class DyingLink(LocalDrafter):
    """A drafter actor that loses everything once, after ``die_at`` calls, then comes back."""

    def __init__(self, worker: DrafterWorker, die_at: int):
        super().__init__(worker)
        self.calls, self.die_at, self.hints_sent = 0, die_at, []

    async def draft(self, call: DraftCall):
        self.calls += 1
        if self.calls == self.die_at:
            for seq_id in list(self.worker.known):
                self.worker.replay.release(seq_id)
            self.worker.known.clear()
            raise DrafterUnavailable("actor died")
        self.hints_sent.append(call.hints)
        return await super().draft(call)


def test_a_reseeded_drafter_gets_the_rest_of_the_hint(tiny_tokenizer, plain):
    link = DyingLink(DrafterWorker(NgramDrafter()), die_at=3)
    settings = dict(device="cpu", max_batch_size=4, max_model_len=256, max_draft_nodes=NODES)
    config = EngineConfig(**settings, max_draft_depth=NODES, adaptive_budget=False, drafter_retry_s=0.0)
    engine = Engine(config, fresh_lm(tiny_tokenizer), link)
    replayed = engine.generate(PROMPTS, with_hints([r.token_ids for r in plain]))
    assert_same(replayed, plain)
    assert engine.counters["drafter_failures"] == 1
    first, *later = [hints for hints in link.hints_sent if hints]
    reseeded = later[0]  # the rest of each hint from where its request stood
    for hint in reseeded.values():
        done = len(plain[0].token_ids) - len(hint)
        assert done > 0 and any(r.token_ids[done:] == hint for r in plain)
    for result in replayed:
        assert result.stats.steps <= math.ceil(LENGTH / NODES) + 3  # one step lost, one re-seeded


def test_the_hint_ahead_is_what_follows_the_tokens_so_far():
    request = Request(1, [5], SamplingParams(draft_hint=(10, 11, 12)))
    assert Engine._hint_ahead(request) == [10, 11, 12]
    request.token_ids = [10]
    assert Engine._hint_ahead(request) == [11, 12]
    request.token_ids = [10, 99]
    assert Engine._hint_ahead(request) == []  # it disagreed: dead
    request.token_ids = [10, 11, 12]
    assert Engine._hint_ahead(request) == []  # used up

"""Asynchronous speculation, remote-drafter faults and streaming: output stays the verifier's."""

import asyncio
import contextvars

import pytest

from actors.drafters.link import DrafterUnavailable, LocalDrafter
from actors.drafters.model import ModelDrafter
from actors.drafters.ngram import NgramDrafter, _Sequence
from actors.drafters.worker import DrafterWorker
from actors.engine import Engine, EngineConfig
from actors.messages import DraftBudget, DraftCall, SamplingParams
from tests.actors.test_lossless import plain_greedy, prompts, untouched_copy

GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)
DEADLINE_S = 60.0  # far beyond any of these steps: reaching it means the awaited thing never happens


async def until(condition, what: str) -> None:
    """Yield to the event loop until ``condition()`` holds; raise once :data:`DEADLINE_S` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {DEADLINE_S} s")
        await asyncio.sleep(0)


def config(**overrides) -> EngineConfig:
    return EngineConfig(**{"device": "cpu", "max_model_len": 256, "max_batch_size": 3, **overrides})


@pytest.mark.parametrize("drafter", ["ngram", "model"])
def test_drafting_ahead_is_used_and_lossless(tiny_lm, drafter):
    """The verifier itself as the model drafter guesses every outcome right, so trees drafted
    ahead must be used (the n-gram drafter rarely guesses a random model right). Output equals
    plain decoding either way."""
    reference = untouched_copy(tiny_lm.model)
    if drafter == "model":
        draft = ModelDrafter(tiny_lm.model, 8, 256, branching=1, threshold=0.0)
    else:
        draft = NgramDrafter()
    settings = dict(max_draft_nodes=4, max_draft_depth=4, adaptive_budget=False, async_speculation=True)
    engine = Engine(config(**settings), tiny_lm, draft)
    batch = prompts(4, seed=5)
    results = engine.generate(batch, GREEDY)
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 24) for p in batch]
    assert engine.counters["speculated"] > 0
    if drafter == "model":  # every guess is right (the last steps' guesses go unused)
        assert engine.counters["speculation_hits"] >= engine.counters["speculated"] - len(batch)


class FlakyLink(LocalDrafter):
    """A remote drafter that loses its state and fails now and then, like a restarting actor."""

    def __init__(self, worker: DrafterWorker, fail_every: int):
        super().__init__(worker)
        self.calls, self.fail_every = 0, fail_every

    async def draft(self, call: DraftCall):
        self.calls += 1
        if self.calls % self.fail_every == 0:
            for seq_id in list(self.worker.known):  # the actor died: everything it held is gone
                self.worker.drafter.release(seq_id)
            self.worker.known.clear()
            raise DrafterUnavailable("actor died")
        return await super().draft(call)


def test_a_failing_drafter_degrades_to_plain_decoding_and_is_reseeded(tiny_lm):
    reference = untouched_copy(tiny_lm.model)
    link = FlakyLink(DrafterWorker(NgramDrafter()), fail_every=4)
    engine = Engine(config(drafter_retry_s=0.0, async_speculation=True), tiny_lm, link)
    batch = prompts(4, seed=6)
    results = engine.generate(batch, GREEDY)
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 24) for p in batch]
    assert engine.counters["drafter_failures"] >= 2
    assert sum(r.stats.drafted for r in results) > 0  # it came back and drafted again


def test_worker_names_sequences_it_does_not_hold():
    worker = DrafterWorker(NgramDrafter())
    reply = worker.draft(DraftCall(proposals=[(7, DraftBudget(4, 4), None)]))
    assert reply.unknown == [7] and len(reply.trees[0]) == 0
    reply = worker.draft(DraftCall(adds=[(7, [1, 2, 3, 1, 2])], proposals=[(7, DraftBudget(4, 4), None)]))
    assert reply.unknown == [] and reply.trees[0].tokens.tolist()[:1] == [3]


def test_ngram_history_is_restored_after_drafting_ahead():
    sequence = _Sequence()
    sequence.extend([5, 6, 7, 5, 6], max_ngram=3)
    before = (list(sequence.history), {k: list(v) for k, v in sequence.index.items()})
    sequence.extend([7, 8, 5], max_ngram=3)
    sequence.truncate(5, max_ngram=3)
    assert (sequence.history, sequence.index) == before


def test_stream_yields_the_generated_text_and_closing_it_aborts(tiny_lm):
    engine = Engine(config(), tiny_lm, NgramDrafter())
    (whole,) = engine.generate([prompts(1)[0]], GREEDY)

    async def consume():
        return [update async for update in engine.stream(prompts(1)[0], GREEDY)]

    updates = asyncio.run(consume())
    assert "".join(u.text for u in updates) == whole.text
    assert sum((u.token_ids for u in updates), []) == whole.token_ids
    assert updates[-1].finish_reason == "length" and updates[-1].stats.new_tokens == 24

    async def abort_early():
        stream = engine.stream(prompts(1)[0], GREEDY)
        first = await anext(stream)
        await stream.aclose()  # the client went away
        # the loop retires the request before its next step, then ends: nothing is left to run
        await asyncio.wait_for(engine._task, DEADLINE_S)
        return first

    assert asyncio.run(abort_early()).finish_reason is None  # closed mid-generation
    assert engine.num_running + engine.num_waiting == 0
    assert engine.verifier.free_slots == 3
    assert engine.counters["aborted"] == 1


class ContextProbe(LocalDrafter):
    """A drafter link that records what a context variable holds when the engine calls it."""

    variable = contextvars.ContextVar("caller", default=None)

    def __init__(self):
        super().__init__(DrafterWorker(NgramDrafter()))
        self.seen = set()

    async def draft(self, call: DraftCall):
        self.seen.add(self.variable.get())
        return await super().draft(call)


def test_the_step_loop_does_not_run_in_the_context_of_the_request_that_started_it(tiny_lm):
    """Ray Serve cancels the calls made in a request's context when its client leaves: the
    loop's drafter calls serve every request, so they must not belong to the first one."""
    probe = ContextProbe()
    engine = Engine(config(async_speculation=True), tiny_lm, probe)

    async def first_request():
        ContextProbe.variable.set("request 1")
        return await engine.generate_async([prompts(1)[0]], GREEDY)

    asyncio.run(first_request())
    assert probe.seen == {None}


def test_a_step_loop_that_is_cancelled_ends_its_streams_with_an_error(tiny_lm):
    engine = Engine(config(max_batch_size=1), tiny_lm, NgramDrafter())

    async def cancel_mid_stream():
        first_prompt, second_prompt = prompts(2, seed=3)
        stream = engine.stream(first_prompt, GREEDY)
        first = await stream.__anext__()
        waiting = asyncio.ensure_future(engine.generate_async([second_prompt], GREEDY))
        await until(lambda: engine.num_waiting == 1, "the second request waits for the one KV slot")
        engine._task.cancel()
        rest = [update async for update in stream]
        with pytest.raises(RuntimeError, match="generation failed: the engine loop stopped"):
            await waiting
        return first, rest

    first, rest = asyncio.run(cancel_mid_stream())
    assert first.finish_reason is None
    assert [update.finish_reason for update in rest][-1:] == ["error"]
    assert all(update.finish_reason is None for update in rest[:-1])
    assert engine.num_running + engine.num_waiting == 0

"""The engine actor's drafter calls time out by the time they waited, not by the time its event
loop spent verifying: a reply that came during a long verifier step is used, a drafter that is
really slow is given up (on a real Ray cluster: an async actor calling a sync one, as the graph's
engine and drafter actors do)."""

import asyncio
import time

import pytest
import ray

from actors.drafters.link import DrafterUnavailable
from pipelines.graph import RemoteDrafter


class Drafter:
    def draft(self, delay_s: float) -> str:
        time.sleep(delay_s)
        return "trees"


class Engine:
    """Sends a draft call, then holds its loop for ``block_s`` (a verifier step), then awaits."""

    def __init__(self, drafter, timeout_s: float):
        self.link = RemoteDrafter(drafter, timeout_s)

    async def step(self, delay_s: float, block_s: float) -> str:
        ahead = asyncio.ensure_future(self.link.draft(delay_s))
        await asyncio.sleep(0)
        time.sleep(block_s)
        try:
            return await ahead
        except DrafterUnavailable as exc:
            return f"unavailable: {exc}"


@pytest.fixture(scope="module")
def engine():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    drafter = ray.remote(num_cpus=0)(Drafter).remote()
    yield ray.remote(num_cpus=0)(Engine).remote(drafter, 1.0)
    if started:
        ray.shutdown()


def test_a_reply_that_came_during_a_long_verifier_step_is_used(engine):
    assert ray.get(engine.step.remote(0.0, 3.0)) == "trees"


def test_a_drafter_slower_than_the_timeout_is_given_up(engine):
    assert ray.get(engine.step.remote(3.0, 0.0)).startswith("unavailable: draft: TimeoutError")

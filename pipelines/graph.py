"""The actor graph on Ray: a drafter actor and an engine actor (the verifier), placed by config.

The same two classes run as plain Ray actors (:func:`start_graph`, for jobs and tests) and as
Ray Serve deployments (``pipelines/serve.py``). The engine actor reaches its drafter through
:class:`RemoteDrafter`, which turns any failure or timeout of the remote call into
:class:`~actors.drafters.link.DrafterUnavailable`: the engine then decodes without drafts
(still lossless) until the drafter, restarted by Ray, answers again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import ray

from actors.drafters.factory import build_drafter
from actors.drafters.link import DrafterUnavailable
from actors.drafters.spec import parse_drafter
from actors.drafters.worker import DrafterWorker
from actors.engine import Engine, EngineConfig, GenerationResult, RequestUpdate
from actors.messages import DraftCall, DraftReply, SamplingParams
from pipelines.common.storage import read_safetensors


@dataclass
class Placement:
    """Where an actor may run: Ray resources, so placement is configuration, not code.

    Attributes:
        num_cpus: CPU cores reserved.
        num_gpus: GPUs reserved (fractions share one).
        accelerator_type: a Ray accelerator type such as ``H100`` or ``L4``; None = any.
        resources: custom resources the node must offer, e.g. ``{drafter_node: 1}``.
        threads: torch threads in the actor (0 = as many as ``num_cpus``, Ray's default). On a
            small machine where jobs alternate (RL: rollout, then update), more threads than
            the reservation let each phase use every core.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator_type: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    threads: int = 0

    def ray_options(self) -> dict:
        """Options for ``ray.remote(...).options`` and Serve's ``ray_actor_options``."""
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.accelerator_type:
            options["accelerator_type"] = self.accelerator_type
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


def remote_drafter_kind(config: EngineConfig) -> bool:
    """Whether ``config.drafter`` runs in its own actor. ``early-exit`` reuses the verifier's
    layers and ``none`` drafts nothing: both stay with the engine."""
    return parse_drafter(config.drafter)[0] in ("ngram", "model")


class DrafterServer(DrafterWorker):
    """A drafter actor / Serve replica: builds the configured drafter and answers draft calls."""

    def __init__(self, config: EngineConfig):
        if not remote_drafter_kind(config):
            raise ValueError(f"drafter {config.drafter!r} runs with the verifier, not in its own actor")
        from actors.engine import resolve_device

        super().__init__(build_drafter(config, None, resolve_device(config.device)))
        self._lock = threading.Lock()

    def draft(self, call: DraftCall) -> DraftReply:
        # Serve may run a sync method for several callers at once (its thread pool); a drafter's
        # state is not thread-safe, and calls from one engine must apply in order anyway.
        with self._lock:
            return super().draft(call)

    def load_weights(self, weights: str | dict) -> int:
        """Hot-swap weights from a safetensors file or folder, or a state dict (see
        :meth:`DrafterWorker.load_weights`)."""
        if isinstance(weights, str):
            weights = read_safetensors(weights)
        with self._lock:
            return super().load_weights(weights)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


class RemoteDrafter:
    """A :class:`~actors.drafters.link.DrafterLink` over a Ray actor or Serve deployment handle.

    Args:
        handle: anything whose ``method.remote(...)`` returns an awaitable (an actor handle, a
            Serve ``DeploymentHandle``).
        timeout_s: a call slower than this counts as a failure.
    """

    def __init__(self, handle, timeout_s: float = 10.0):
        self.handle = handle
        self.timeout_s = timeout_s

    async def info(self) -> dict:
        return await self._call("info")

    async def draft(self, call: DraftCall) -> DraftReply:
        return await self._call("draft", call)

    async def _call(self, method: str, *args):
        try:
            return await responsive_wait(getattr(self.handle, method).remote(*args), self.timeout_s)
        except Exception as exc:  # dead, restarting, unreachable or slow: all mean "no drafts now"
            raise DrafterUnavailable(f"{method}: {type(exc).__name__}: {exc}") from exc


async def responsive_wait(awaitable, timeout_s: float, tick_s: float = 0.05):
    """``awaitable``'s result, or :class:`TimeoutError` after ``timeout_s`` of waiting while the
    event loop ran. Time the loop spent blocked does not count: the engine verifies on its loop's
    thread, and with ``asyncio.wait_for`` a drafter reply that arrived during a long verifier
    step (a prefill of a full batch takes seconds on a CPU) was dropped as a timeout once the
    step outlasted it, marking a healthy drafter unavailable."""
    future = asyncio.ensure_future(awaitable)
    waited = 0.0
    while True:
        began = time.monotonic()
        await asyncio.wait({future}, timeout=tick_s)
        if future.done():
            return future.result()
        waited += min(time.monotonic() - began, 2 * tick_s)  # a blocked loop counts one tick
        if waited >= timeout_s:
            future.cancel()
            raise TimeoutError(f"no reply within {timeout_s:g} s")


class EngineServer:
    """An engine actor / Serve replica: the verifier and the step loop, with a remote drafter.

    Args:
        config: the engine settings.
        drafter: a handle to the drafter actor or deployment; None builds ``config.drafter``
            in this actor (``early-exit``, ``none``).
        drafter_timeout_s: see :class:`RemoteDrafter`.
        threads: torch threads here (0 = Ray's default: as many as the reserved CPUs).
    """

    def __init__(self, config: EngineConfig, drafter=None, drafter_timeout_s: float = 10.0, threads: int = 0):
        if threads:
            import torch

            torch.set_num_threads(threads)
        link = RemoteDrafter(drafter, drafter_timeout_s) if drafter is not None else None
        self.engine = Engine(config, drafter=link)

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[GenerationResult]:
        return await self.engine.generate_async(prompts, params)

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestUpdate]:
        async for update in self.engine.stream(prompt_ids, params):
            yield update

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.engine.encode_chat(messages)

    def load_weights(self, state_dict: dict, version: int) -> None:
        """Copy new verifier weights in place as ``version`` (:meth:`Engine.load_weights`: refused
        while requests run, or for a key or shape that does not fit)."""
        self.engine.load_weights(state_dict, version)

    def policy_version(self) -> int:
        return self.engine.policy_version

    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0):
        """Teacher-forced log-probs of ``completions`` under the current weights."""
        return self.engine.score(prompts, completions, temperature)

    def counters(self) -> dict[str, int]:
        return dict(self.engine.counters)

    def load(self) -> dict:
        """Requests being decoded and waiting for a KV slot."""
        return {"running": self.engine.num_running, "waiting": self.engine.num_waiting}

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass
class GraphConfig:
    """A drafter actor and an engine actor.

    Attributes:
        engine: model, drafter and engine settings.
        drafter: where the drafter actor runs.
        verifier: where the engine (verifier) actor runs.
        drafter_timeout_s: a drafter call slower than this is given up for that step.
        name: prefix of the actors' names (as the Ray dashboard shows them).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    drafter: Placement = field(default_factory=Placement)
    verifier: Placement = field(default_factory=Placement)
    drafter_timeout_s: float = 10.0
    name: str = "tandem"


@dataclass
class Graph:
    engine: ray.actor.ActorHandle
    drafter: ray.actor.ActorHandle | None


def start_graph(cfg: GraphConfig) -> Graph:
    """Start the drafter actor (restarted by Ray if it dies) and the engine actor wired to it."""
    drafter = None
    if remote_drafter_kind(cfg.engine):
        drafter = (
            ray.remote(DrafterServer)
            .options(name=f"{cfg.name}-drafter", max_restarts=-1, **cfg.drafter.ray_options())
            .remote(cfg.engine)
        )
    engine = (
        ray.remote(EngineServer)
        .options(name=f"{cfg.name}-verifier", max_concurrency=1000, **cfg.verifier.ray_options())
        .remote(cfg.engine, drafter, cfg.drafter_timeout_s, cfg.verifier.threads)
    )
    return Graph(engine, drafter)


def wait_ready(graph: Graph, timeout_s: float = 900.0) -> None:
    """Block until the graph's actors have built their engine and drafter. A job that sends work
    at once would otherwise time out its first drafter calls while the drafter actor still
    imports and loads (the engine then decodes without drafts: lossless, but slower)."""
    handles = [graph.engine] + ([graph.drafter] if graph.drafter is not None else [])
    try:
        ray.get([handle.node_id.remote() for handle in handles], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"the engine and drafter actors did not start within {timeout_s:.0f} s") from None

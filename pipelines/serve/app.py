"""The Serve application: its config, the three deployments and the local ``tandem serve`` runner.

tandem serve [configs/serve.yaml] [--port 8000] [key=value ...]     (local Ray, blocks)
serve run cluster/serve.yaml  /  serve deploy cluster/serve.yaml    (a cluster; import path
pipelines.serve:build_app)

Three deployments, each scaled and placed on its own: ``Ingress`` (FastAPI: HTTP, auth,
validation, SSE), ``Verifier`` (an engine replica: the target model, continuous batching, the
speculative step loop, metrics) and ``Drafter`` (draft trees for the verifier replicas).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field

from ray import serve

from actors.engine import EngineConfig
from actors.messages import SamplingParams
from pipelines.graph import DrafterServer, EngineServer, Placement, remote_drafter_kind
from pipelines.serve.http import Ingress

log = logging.getLogger(__name__)


@dataclass
class Scaling:
    """One deployment's replicas and resources.

    Attributes:
        placement: resources of each replica (GPU kind, custom resources).
        min_replicas: replicas kept when idle.
        max_replicas: replicas at most under load.
        target_ongoing_requests: in-flight requests per replica the autoscaler aims for.
        max_ongoing_requests: in-flight requests a replica accepts before callers queue.
    """

    placement: Placement = field(default_factory=Placement)
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 32

    def options(self) -> dict:
        """``@serve.deployment`` options."""
        autoscaling = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }
        return {
            "autoscaling_config": autoscaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": self.placement.ray_options(),
        }


@dataclass
class ServeConfig:
    """Settings of ``tandem serve`` and of ``pipelines.serve:build_app``.

    Attributes:
        engine: model, drafter and engine settings of every verifier replica.
        host: address the HTTP proxy listens on.
        port: its port.
        served_model_name: the ``model`` clients ask for; empty = the model's own name.
        api_key: when set (or ``TANDEM_API_KEY`` is), requests need ``Authorization: Bearer KEY``.
        default_max_tokens: ``max_tokens`` when a request leaves it out.
        drafter_timeout_s: a drafter call slower than this is given up for that step.
        ingress: the HTTP deployment.
        verifier: the engine (verifier) deployment.
        drafter: the drafter deployment (``ngram`` and ``model:`` drafters; others run inside
            the verifier replicas).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = ""
    api_key: str = ""
    default_max_tokens: int = 256
    drafter_timeout_s: float = 10.0
    # Defaults fit a laptop: the verifier takes the cores (Ray sets its torch threads from
    # num_cpus), the ingress and the n-gram drafter are light. Clusters set GPUs (cluster/).
    ingress: Scaling = field(default_factory=lambda: Scaling(Placement(num_cpus=0), 1, 2, 64.0, 256))
    verifier: Scaling = field(default_factory=lambda: Scaling(Placement(num_cpus=2), 1, 1, 8.0, 32))
    drafter: Scaling = field(default_factory=lambda: Scaling(Placement(num_cpus=0), 1, 1, 4.0, 64))

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.default_max_tokens <= 0:
            raise ValueError(f"default_max_tokens must be > 0, got {self.default_max_tokens}")
        for name in ("ingress", "verifier", "drafter"):
            scaling = getattr(self, name)
            if not 0 <= scaling.min_replicas <= scaling.max_replicas or scaling.max_replicas < 1:
                raise ValueError(f"{name}: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")

    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return (
            "SmolLM2-135M-Instruct"
            if self.engine.model == "default"
            else os.path.basename(self.engine.model.rstrip("/"))
        )


CLI_FLAGS = {"--port": "port", "--host": "host", "--drafter": "engine.drafter", "--model": "engine.model"}


class VerifierReplica(EngineServer):
    """The ``Verifier`` deployment: an engine whose requests feed Tandem's metrics."""

    def __init__(self, config: EngineConfig, drafter, drafter_timeout_s: float, model_name: str):
        super().__init__(config, drafter, drafter_timeout_s)
        from pipelines.serve.metrics import ServingMetrics

        self.metrics = ServingMetrics(model_name)

    def prepare(self, prompt: str | list[int] | None, messages: list[dict] | None, params: SamplingParams):
        """Token ids of a request, checked against the context; ValueError names what is wrong."""
        engine = self.engine
        if messages is not None:
            ids = engine.encode_chat(messages)
        elif isinstance(prompt, str):
            ids = engine.tokenizer.encode(prompt)
        else:
            vocab = engine.model.config.vocab_size
            if any(not 0 <= t < vocab for t in prompt or []):
                raise ValueError(f"prompt token ids must be in [0, {vocab})")
            ids = list(prompt or [])
        engine.check_prompt(ids)
        room = engine.config.max_model_len - len(ids) - engine.config.max_draft_nodes - 1
        if params.max_new_tokens > room:
            raise ValueError(
                f"max_tokens={params.max_new_tokens} is beyond the context: the prompt has {len(ids)} "
                f"tokens and max_model_len={engine.config.max_model_len} leaves room for {room}"
            )
        return ids

    async def stream_request(self, prompt, messages, params: SamplingParams):
        ids = self.prepare(prompt, messages, params)
        record = self.metrics.track()
        async for update in self.engine.stream(ids, params):
            record(update)
            self.metrics.load(self.engine.num_running, self.engine.num_waiting)
            yield update


def build(cfg: ServeConfig) -> serve.Application:
    """The three deployments, bound into one application."""
    api_key = cfg.api_key or os.environ.get("TANDEM_API_KEY", "")
    drafter = None
    if remote_drafter_kind(cfg.engine):
        # Called once per verifier step: an access-log line per call would drown the replica logs.
        quiet = {"logging_config": {"enable_access_log": False}}
        drafter = serve.deployment(DrafterServer, name="Drafter", **cfg.drafter.options(), **quiet)
        drafter = drafter.bind(cfg.engine)
    verifier = serve.deployment(VerifierReplica, name="Verifier", **cfg.verifier.options()).bind(
        cfg.engine, drafter, cfg.drafter_timeout_s, cfg.model_name()
    )
    ingress = serve.deployment(Ingress, name="Ingress", **cfg.ingress.options())
    return ingress.bind(verifier, cfg.model_name(), api_key, cfg.default_max_tokens)


def build_app(args: dict) -> serve.Application:
    """Entry point for ``serve run`` / ``serve deploy``: ``args`` may name a ``config`` YAML and
    hold dotted overrides (``{"config": "configs/serve.yaml", "engine.drafter": "ngram"}``)."""
    from pipelines.config import load_config

    args = dict(args or {})
    path = args.pop("config", None)
    return build(load_config(ServeConfig, path, [f"{key}={value}" for key, value in args.items()]))


def main(cfg: ServeConfig) -> None:
    """Start a local Ray (always a new one), deploy the app and serve until SIGINT or SIGTERM."""
    import ray

    num_cpus = max(os.cpu_count() or 1, cfg.verifier.placement.num_cpus)
    ray.init(address="local", num_cpus=num_cpus, logging_level=logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build(cfg), name="tandem", route_prefix="/")
        print(ready_message(cfg), file=sys.stderr, flush=True)
        stop.wait()
    finally:
        print("[tandem] shutting down", file=sys.stderr)
        serve.shutdown()
        ray.shutdown()


def ready_message(cfg: ServeConfig) -> str:
    base, name = f"http://{cfg.host}:{cfg.port}", cfg.model_name()
    body = f'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hi"}}]}}'
    return (
        f"[tandem] serving {name} (drafter {cfg.engine.drafter}) at {base}/v1 — Ctrl-C stops\n"
        f"[tandem] try: curl {base}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
    )

"""Tandem's serving metrics, through ``ray.util.metrics`` onto Ray's Prometheus export.

Ray prefixes every name with ``ray_``: ``tandem_requests_total`` is scraped as
``ray_tandem_requests_total``. ``cluster/grafana_dashboard.json`` plots them.
"""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

from actors.requests import RequestUpdate

_LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ServingMetrics:
    """One set per engine replica; :meth:`track` follows one request's updates."""

    def __init__(self, model: str):
        tags = ("model",)
        self.tags = {"model": model}
        self.requests = Counter(
            "tandem_requests_total", "Finished requests, by finish reason", (*tags, "finish_reason")
        )
        self.prompt_tokens = Counter("tandem_prompt_tokens_total", "Prompt tokens of finished requests", tags)
        self.generated = Counter("tandem_generation_tokens_total", "Generated tokens", tags)
        self.drafted = Counter("tandem_drafted_tokens_total", "Draft tokens sent to the verifier", tags)
        self.accepted = Counter("tandem_accepted_tokens_total", "Draft tokens the verifier accepted", tags)
        self.mean_accepted = Histogram(
            "tandem_mean_accepted_tokens",
            "Tokens committed per verifier step, per request",
            [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 12, 16],
            tags,
        )
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds", "Time to first token", _LATENCY_BOUNDS, tags
        )
        self.itl = Histogram(
            "tandem_inter_token_latency_seconds", "Time between tokens", _LATENCY_BOUNDS, tags
        )
        self.running = Gauge("tandem_running_requests", "Requests being decoded", tags)
        self.waiting = Gauge("tandem_waiting_requests", "Requests waiting for a KV slot", tags)
        for metric in (self.prompt_tokens, self.generated, self.drafted, self.accepted, self.mean_accepted):
            metric.set_default_tags(self.tags)
        for metric in (self.ttft, self.itl, self.running, self.waiting):
            metric.set_default_tags(self.tags)

    def load(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def track(self):
        """A per-request recorder: call it with each update, in order."""
        start = last = time.perf_counter()
        first = True

        def record(update: RequestUpdate) -> None:
            nonlocal last, first
            now = time.perf_counter()
            if update.token_ids:
                if first:
                    self.ttft.observe(now - start)
                    first = False
                else:
                    self.itl.observe((now - last) / len(update.token_ids))
                last = now
                self.generated.inc(len(update.token_ids))
            if update.finish_reason:
                stats = update.stats
                self.requests.inc(1, {**self.tags, "finish_reason": update.finish_reason})
                self.prompt_tokens.inc(update.prompt_tokens)
                if stats.drafted:
                    self.drafted.inc(stats.drafted)
                if stats.accepted:
                    self.accepted.inc(stats.accepted)
                if stats.steps:
                    self.mean_accepted.observe(stats.mean_accepted_tokens)

        return record

"""The rollout engines as the RL loop sees them: named Ray engine actors, called with timeouts
that raise (a stuck engine fails the step, it never hangs the run) and a version handshake."""

from __future__ import annotations

import time

from actors.messages import SamplingParams
from actors.requests import GenerationResult


class EngineTimeout(RuntimeError):
    """An engine actor did not answer in time."""


class EnginePool:
    """Engine actors found by name (started by the job with the actor graph).

    Args:
        names: the actors' names.
        namespace: their Ray namespace (None = the job's).
        timeout_s: a generate call slower than this raises :class:`EngineTimeout`.
        sync_timeout_s: the same for a weight sync.
    """

    def __init__(self, names: list[str], namespace: str | None, timeout_s: float, sync_timeout_s: float):
        import ray

        self.handles = [ray.get_actor(name, namespace=namespace) for name in names]
        self.timeout_s, self.sync_timeout_s = timeout_s, sync_timeout_s

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[GenerationResult]:
        """Split the requests over the engines (in order), run them concurrently, join in order."""
        share = -(-len(prompts) // len(self.handles))
        calls = [
            handle.generate.remote(prompts[i : i + share], params[i : i + share])
            for handle, i in zip(self.handles, range(0, len(prompts), share))
        ]
        return [result for part in self._get(calls, self.timeout_s, "generate") for result in part]

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs (temperature 1) of each completion token under the engines'
        current weights, split over the engines like :meth:`generate`, joined in order."""
        share = -(-len(prompts) // len(self.handles))
        calls = [
            handle.score.remote(prompts[i : i + share], completions[i : i + share], 1.0)
            for handle, i in zip(self.handles, range(0, len(prompts), share))
        ]
        return [row for part in self._get(calls, self.timeout_s, "score") for row in part]

    def load_weights(self, state_dict: dict, version: int) -> float:
        """Load ``state_dict`` into every engine as ``version`` (put in the object store once);
        check every engine reports it; seconds taken."""
        import ray

        began = time.perf_counter()
        ref = ray.put(state_dict)
        timeout = self.sync_timeout_s
        self._get([h.load_weights.remote(ref, version) for h in self.handles], timeout, "load_weights")
        versions = self._get([h.policy_version.remote() for h in self.handles], timeout, "policy_version")
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync to version {version} failed: the engines report {versions}")
        return time.perf_counter() - began

    @staticmethod
    def _get(calls: list, timeout_s: float, what: str) -> list:
        import ray

        try:
            return ray.get(calls, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EngineTimeout(f"engine {what} took longer than {timeout_s:.0f}s") from None

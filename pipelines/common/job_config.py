"""The settings every job on the live engine actors has (``tandem rl``, ``tandem preference``):
the engine and where its actors run, the worker group, the run's seed, name and storage, the
weight-sync timeout and the metrics file. Each job's config extends :class:`EngineJobConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine_config import EngineConfig
from actors.trainers.rl.config import TaskConfig
from pipelines.common.storage import StoreConfig
from pipelines.common.training import WorkersConfig
from pipelines.graph import Placement


@dataclass
class EngineJobConfig:
    """Attributes:
    engine: the policy model and the engine (drafter, dtype, KV cache size).
    verifier: where each engine (verifier) actor runs.
    drafter: where each drafter actor runs (``ngram`` and ``model:`` drafters).
    task: the verifiable task.
    workers: the Ray Train worker group (``ddp`` or ``deepspeed`` ZeRO-2).
    seed: the run's seed: problems, sampling seeds and the trainer all derive from it.
    storage_path: where checkpoints live, local or ``s3://``; the run is ``storage_path/name``
        and a run of the same name resumes from its latest checkpoint.
    name: the run's name.
    checkpoint_every: save every this many steps (and at the end).
    keep_checkpoints: the latest checkpoints kept (``tandem rl-bench`` reads a run's policy at
        several steps: keep them all with ``steps // checkpoint_every + 1``).
    sync_timeout_s: a weight sync slower than this fails the run (never hangs).
    metrics_out: a JSON file with the expanded config, the per-step history and the
        evaluations (and a PNG of the curves beside it); empty = none.
    s3: object-store endpoint and credentials.
    """

    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_batch_size=32, max_model_len=1024))
    verifier: Placement = field(default_factory=Placement)
    drafter: Placement = field(default_factory=lambda: Placement(num_cpus=0.0))
    task: TaskConfig = field(default_factory=TaskConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    seed: int = 0
    storage_path: str = "~/.cache/tandem"
    name: str = "run"
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    sync_timeout_s: float = 300.0
    metrics_out: str = ""
    s3: StoreConfig = field(default_factory=StoreConfig)

    def check_job(self, max_new_tokens: int, sampling_key: str) -> None:
        """The checks every such job shares: a plain name, a checkpoint interval, and room in
        ``engine.max_model_len`` for a prompt beside ``max_new_tokens`` (``sampling_key``: its
        config key, for the message; 0 = the job samples nothing) and a draft tree."""
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if not self.name.strip() or "/" in self.name:
            raise ValueError("name must be a plain name (no '/')")
        if not max_new_tokens:
            return
        room = max_new_tokens + self.engine.max_draft_nodes + 1
        if room >= self.engine.max_model_len:
            raise ValueError(
                f"engine.max_model_len={self.engine.max_model_len} leaves no room for a prompt: "
                f"{sampling_key} + engine.max_draft_nodes + 1 = {room}"
            )

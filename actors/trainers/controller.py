"""What the controller loops on the live engine actors (``actors/trainers/rl/loop.py``,
``actors/trainers/preference/loop.py``) share: a Ray Train worker's setup (threads, rank, seed,
the run restored from the latest checkpoint, the engine pool on rank 0, a scratch folder), the
step report with its checkpoint, the resume check and the sampling parameters of a rollout."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actors.messages import SamplingParams


@dataclass
class ControllerConfig:
    """What every controller loop needs besides its algorithm's parts (each loop's
    ``LoopConfig`` adds those; the job builds it from its config).

    Attributes:
        model: the policy's model spec (the engines' ``engine.model``).
        engines: the engine actors' names; namespace: their Ray namespace.
        seed: the run's seed.
        checkpoint_every: checkpoint every this many steps (and where the loop says: the last
            step, a round's end).
        sync_timeout_s: a weight sync slower than this raises.
        strategy: ``ddp`` or ``deepspeed``.
        threads: torch threads per worker (0 = torch's default).
        expanded: the settings that shape the trajectory (recorded; a resume with others is refused).
    """

    model: str
    engines: list[str]
    namespace: str | None = None
    seed: int = 0
    checkpoint_every: int = 5
    sync_timeout_s: float = 300.0
    strategy: str = "ddp"
    threads: int = 0
    expanded: dict = field(default_factory=dict)


class ControllerRun:
    """One worker's side of a controller loop's run; a loop's run class adds the trainer, its
    counters and the history, ``save`` (into a folder, returned) and ``restore``.

    Args:
        cfg: the loop's settings.
        rank, world: this worker and the worker count.
        device: where the policy trains.
    """

    step: int = 0

    def __init__(self, cfg: ControllerConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device

    @property
    def ddp_wrap(self) -> Callable | None:
        """What the trainer wraps the policy with: Ray Train's ``prepare_model`` (DDP) when
        several workers train with ``ddp``, else None (one worker, or DeepSpeed's own engine)."""
        if self.world > 1 and self.cfg.strategy == "ddp":
            from ray.train.torch import prepare_model

            return prepare_model
        return None

    def save(self, folder: Path) -> Path:
        raise NotImplementedError

    def restore(self, folder: Path) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def worker_run(
    cfg: ControllerConfig,
    make_run: Callable[[Any, int, int, torch.device], ControllerRun],
    timeout_s: float,
    prefix: str,
) -> Iterator[tuple[Any, Any, Any, Path]]:
    """Set up this Ray Train worker and yield ``(run, engines, dist, scratch)``.

    ``run`` is ``make_run(cfg, rank, world, device)`` restored from the run's latest checkpoint
    when there is one; ``engines`` the :class:`EnginePool` of ``cfg.engines`` on rank 0 (None
    elsewhere: only rank 0 talks to the engines); ``dist`` ``torch.distributed`` with more than
    one worker, else None; ``scratch`` a folder for checkpoints before Ray Train persists them,
    removed on exit.
    """
    import ray.train
    import torch.distributed as dist
    from ray.train.torch import get_device

    from actors.trainers.rl.engines import EnginePool

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.seed)
    run = make_run(cfg, rank, world, get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.restore(Path(folder))
    engines = None
    if rank == 0:
        engines = EnginePool(cfg.engines, cfg.namespace, timeout_s, cfg.sync_timeout_s)
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield run, engines, dist if world > 1 else None, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report_step(run: ControllerRun, metrics: dict, scratch: Path, checkpoint: bool) -> None:
    """Report a step's ``metrics`` to Ray Train, with ``run``'s checkpoint when ``checkpoint``
    (written under ``scratch``, removed once Ray Train has persisted it)."""
    import ray.train
    from ray.train import Checkpoint

    if not checkpoint:
        ray.train.report(metrics)
        return
    folder = run.save(scratch / f"step_{run.step}")
    name = f"checkpoint_{run.step:06d}"
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)), checkpoint_dir_name=name)
    shutil.rmtree(folder, ignore_errors=True)  # persisted by now


def check_settings(recorded: object, expanded: dict, folder: Path) -> None:
    """Refuse to resume from the checkpoint in ``folder`` when the settings it ``recorded`` are
    not the run's ``expanded`` ones (the trajectory would not be the one it started)."""
    if recorded != expanded:
        raise ValueError(
            f"the checkpoint in {folder} was written with other settings: resume with the same "
            "config, or start a new run (another name)"
        )


def sampling_params(max_new_tokens: int, temperature: float) -> SamplingParams:
    """A rollout's sampling: with the policy's log-prob of every token, and refused up front
    unless the KV cache can hold ``max_new_tokens`` (a completion ends by EOS or its length,
    never cut short by a full cache)."""
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        logprobs=True,
        require_full_length=True,
    )

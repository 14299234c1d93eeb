"""The preference controller loop, run inside every Ray Train worker for the whole run.

A run is ``rounds`` rounds. Each round: rank 0 gets the round's pairs (the dataset's, given by
the job, for round 0; otherwise sampled on-policy by the engine actors, which hold the round's
starting policy) with their reference log-probs (teacher-forced by the same engines: the
reference of round r is the policy that sampled it) and broadcasts them; every worker trains
``epochs`` passes over them, its share of each step's pairs; rank 0 syncs the new weights into
the engines as version ``round + 1``. Problems and seeds are pure functions of (seed, round,
index) and the shuffle of (seed, round, epoch), and a checkpoint holds the round's pairs, so a
resumed run replays nothing and skips nothing.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.models import load_model
from actors.trainers import controller
from actors.trainers.preference.batch import micro_batches
from actors.trainers.preference.config import LossConfig, SamplingConfig, TrainConfig
from actors.trainers.preference.pairs import Pair, PairStats, attach_reference, build_pairs
from actors.trainers.preference.trainer import PairTotals, PreferenceTrainer, reduce_step
from actors.trainers.rl.config import TaskConfig
from actors.trainers.rl.rollout import Prompter, collect, sample_seed
from actors.trainers.rl.tasks import build_task

PAIRS_FILE = "pairs.json"


@dataclass
class LoopConfig(controller.ControllerConfig):
    """What the loop needs (``pipelines/preference`` builds it from ``PreferenceConfig``): the
    fields of :class:`ControllerConfig` (``checkpoint_every``: and at the end of every round) and

    Attributes:
        task, sampling, loss, train: the loop's parts.
        rounds: rounds of the run (round 0 uses ``pairs`` when given).
        pairs: round 0's pairs (a dataset's, scored), as :meth:`Pair.to_dict` rows; None =
            every round on-policy.
    """

    checkpoint_every: int = 10
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rounds: int = 1
    pairs: list[dict] | None = None


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train entry point: ``config["loop"]`` is a :class:`LoopConfig`."""
    cfg: LoopConfig = config["loop"]
    worker = controller.worker_run(cfg, PreferenceRun, cfg.sampling.timeout_s, "preference-")
    with worker as (run, engines, dist, scratch):
        reported = False
        while run.round < cfg.rounds:
            for metrics in run.round_steps(engines, dist):
                report(run, metrics, scratch)
                reported = True
        if not reported:  # a finished run re-run: its last state again, so the result has a checkpoint
            report(run, run.history[-1] if run.history else {"step": run.step}, scratch, force=True)


def report(run: PreferenceRun, metrics: dict, scratch: Path, force: bool = False) -> None:
    """Report the step's metrics to Ray Train, with a checkpoint every ``checkpoint_every`` steps
    and at the end of every round."""
    if run.rank == 0 and not force:
        print(progress_line(metrics, run.cfg.rounds), flush=True)
    round_end = metrics.get("round_step") == metrics.get("round_steps")
    due = force or not run.step % run.cfg.checkpoint_every or round_end
    controller.report_step(run, metrics, scratch, checkpoint=due)


def progress_line(m: dict, rounds: int, width: int = 20) -> str:
    """One console line per step: a bar over the round's steps and the TRL metrics."""
    done = round(width * m["round_step"] / m["round_steps"])
    bar = "#" * done + "." * (width - done)
    return (
        f"[tandem preference] round {m['round'] + 1}/{rounds} [{bar}] step {m['round_step']}/"
        f"{m['round_steps']}: loss {m['loss']:.4f}, margins {m['rewards/margins']:.3f}, accuracy "
        f"{m['rewards/accuracies']:.2f}, chosen {m['rewards/chosen']:.3f}, rejected "
        f"{m['rewards/rejected']:.3f}, grad norm {m['grad_norm']:.2f}, {m['timing/step_s']:.1f}s"
    )


def shuffle_seed(seed: int, round_: int, epoch: int) -> int:
    key = f"{seed}:{round_}:{epoch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class PreferenceRun(controller.ControllerRun):
    """One worker's side of the run (see :class:`ControllerRun`): the trainer, the round and
    step counters, the round's pairs, the history."""

    def __init__(self, cfg: LoopConfig, rank: int, world: int, device: torch.device):
        super().__init__(cfg, rank, world, device)
        train = cfg.train
        if train.batch_size % world:
            raise ValueError(f"train.batch_size={train.batch_size} must split over {world} workers")
        micro_steps = -(-(train.batch_size // world) // train.micro_batch_size)
        loaded = load_model(cfg.model, "float32")
        self.trainer = PreferenceTrainer(
            loaded.model.to(device), train, cfg.loss, world, cfg.strategy, micro_steps, self.ddp_wrap
        )
        self.task = build_task(cfg.task.name, **cfg.task.knobs)
        self.prompter = Prompter(loaded.tokenizer, self.task, cfg.task.few_shot, cfg.task.response_prefix)
        self.round, self.round_step, self.step = 0, 0, 0
        self.pairs: list[Pair] | None = None
        self.round_metrics: dict = {}
        self.history: list[dict] = []

    # -- a round --------------------------------------------------------------------------

    def round_steps(self, engines, dist):
        """Run the current round from where it stands, yielding each step's metrics; at its end
        sync the weights into the engines (rank 0) and move to the next round."""
        if self.pairs is None:
            if self.rank == 0 and engines is not None:  # the engines sample from this round's start
                engines.load_weights(self.trainer.sync_state(), self.round)
            self.start_round(engines, dist)
        total = self.steps_in_round()
        while self.round_step < total:
            yield self.step_once(dist, total)
        self.finish_round(engines, dist)

    def start_round(self, engines, dist) -> None:
        """This round's pairs on every worker (rank 0 makes them) and the round's metrics."""
        payload = [None]
        if self.rank == 0:
            payload = [self.make_pairs(engines)]
        if dist is not None:
            dist.broadcast_object_list(payload, src=0)
        rows, self.round_metrics = payload[0]
        self.pairs = [Pair.from_dict(row) for row in rows]
        self.round_step = 0
        self.steps_in_round()  # fail now, by name, when the round is too small to train

    def make_pairs(self, engines) -> tuple[list[dict], dict]:
        """Round 0 of a dataset run: the given pairs. Otherwise: sample, score, pair, reference."""
        cfg = self.cfg
        if self.round == 0 and cfg.pairs is not None:
            return cfg.pairs, {"pairs/total": len(cfg.pairs)}
        began = time.perf_counter()
        groups = self.sample(engines)
        pairs, stats = build_pairs(groups, cfg.sampling)
        sampled = time.perf_counter() - began
        if cfg.loss.needs_reference:
            attach_reference(pairs, engines.score)
        samples = [s for g in groups for s in g]
        metrics = stats.metrics() | {
            "pairs/total": len(pairs),
            "sampling/accuracy": statistics.fmean(s.score.correct for s in samples),
            "completions/mean_length": statistics.fmean(len(s.token_ids) for s in samples),
            "timing/sampling_s": sampled,
            "timing/reference_s": time.perf_counter() - began - sampled,
        }
        return [p.to_dict() for p in pairs], metrics

    def sample(self, engines) -> list:
        """``sampling.n`` seeded samples of each of this round's problems, from the engines."""
        cfg, sampling = self.cfg, self.cfg.sampling
        first = self.round * sampling.problems_per_round
        problems = [self.task.problem(cfg.seed, first + i) for i in range(sampling.problems_per_round)]
        prompts = [self.prompter(p) for p in problems]
        params = controller.sampling_params(sampling.max_new_tokens, sampling.temperature)

        def seeds(index: int, k: int) -> int:
            return sample_seed(cfg.seed, self.round, index, k, "fresh")

        prefix = cfg.task.response_prefix
        groups = collect(engines.generate, self.task, problems, prompts, sampling.n, params, seeds, prefix)
        stale = {s.policy_version for g in groups for s in g} - {self.round}
        if stale:
            raise RuntimeError(f"round {self.round}: samples came from policy version(s) {sorted(stale)}")
        return groups

    def steps_in_round(self) -> int:
        per_epoch = len(self.pairs) // self.cfg.train.batch_size
        if not per_epoch:
            raise ValueError(
                f"round {self.round} has {len(self.pairs)} pairs, fewer than train.batch_size="
                f"{self.cfg.train.batch_size}: sample more problems (sampling.problems_per_round) "
                "or lower train.batch_size"
            )
        return per_epoch * self.cfg.train.epochs

    def finish_round(self, engines, dist) -> None:
        self.round += 1
        self.pairs, self.round_step = None, 0
        if self.rank == 0 and engines is not None and self.round == self.cfg.rounds:
            engines.load_weights(self.trainer.sync_state(), self.round)  # the final policy, for eval
        if dist is not None:
            dist.barrier()

    # -- a step ---------------------------------------------------------------------------

    def step_pairs(self) -> list[Pair]:
        """The pairs of the round's current step (over every worker): a seeded shuffle per epoch."""
        size = self.cfg.train.batch_size
        per_epoch = len(self.pairs) // size
        epoch, index = divmod(self.round_step, per_epoch)
        generator = torch.Generator().manual_seed(shuffle_seed(self.cfg.seed, self.round, epoch))
        order = torch.randperm(len(self.pairs), generator=generator).tolist()
        return [self.pairs[i] for i in order[index * size : (index + 1) * size]]

    def step_once(self, dist, total: int) -> dict:
        """One optimizer step over this worker's share of the step's pairs; its metrics."""
        began = time.perf_counter()
        chosen = self.step_pairs()
        totals = PairTotals(pairs=len(chosen), chosen_tokens=sum(len(p.chosen_ids) for p in chosen))
        mine = chosen[self.rank :: self.world]
        batches = micro_batches(mine, self.cfg.train.micro_batch_size)
        sums = self.trainer.update(batches, totals, self.device)
        metrics = reduce_step(sums, dist)
        self.round_step += 1
        self.step += 1
        per_epoch = len(self.pairs) // self.cfg.train.batch_size
        metrics |= {
            "step": self.step,
            "round": self.round,
            "round_step": self.round_step,
            "round_steps": total,
            "epoch": (self.round_step - 1) // per_epoch,
            "policy_version": self.round,
            "timing/step_s": time.perf_counter() - began,
        }
        metrics |= self.round_metrics
        self.history.append(metrics)
        return metrics

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)  # a worker with nothing to write reports it empty
        state = {
            "step": self.step,
            "round": self.round,
            "round_step": self.round_step,
            "round_metrics": self.round_metrics,
            "history": self.history,
            "config": self.cfg.expanded,
        }
        self.trainer.save(folder, state, self.rank)
        if self.rank == 0 and self.pairs is not None:
            (folder / PAIRS_FILE).write_text(json.dumps([p.to_dict() for p in self.pairs]))
        return folder

    def restore(self, folder: Path) -> None:
        state = self.trainer.restore(folder)
        controller.check_settings(state.get("config"), self.cfg.expanded, folder)
        self.step, self.round, self.round_step = (
            int(state["step"]),
            int(state["round"]),
            int(state["round_step"]),
        )
        self.round_metrics, self.history = dict(state["round_metrics"]), list(state["history"])
        saved = folder / PAIRS_FILE
        self.pairs = (
            [Pair.from_dict(row) for row in json.loads(saved.read_text())] if saved.exists() else None
        )


__all__ = ["LoopConfig", "PairStats", "PreferenceRun", "train_loop_per_worker"]

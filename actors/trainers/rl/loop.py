"""The RL controller loop, run inside every Ray Train worker for the whole run.

A ``TorchTrainer`` gives the driver no handle on its workers, so the loop lives here: rank 0
rolls out through the engine actors, shapes the rewards and broadcasts the step's samples; every
worker trains on its share; rank 0 syncs the new weights into the engines (version = step) and
Ray Train persists the checkpoint. Problems and sampling seeds are pure functions of (seed,
step, index), so a resumed run replays nothing and skips nothing; after a resume the restored
weights are synced before the first rollout.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.messages import SamplingParams
from actors.models import load_model
from actors.trainers import controller
from actors.trainers.rl import config as parts
from actors.trainers.rl.batch import micro_batches
from actors.trainers.rl.length import AccuracyGate
from actors.trainers.rl.metrics import reduce_update, rollout_metrics
from actors.trainers.rl.policy import PolicyTrainer, StepTotals
from actors.trainers.rl.rollout import Prompter, Sample, collect, sample_seed
from actors.trainers.rl.shaping import advantages, apply_length_reward, informative
from actors.trainers.rl.tasks import build_task


@dataclass
class LoopConfig(controller.ControllerConfig):
    """What the loop needs (``pipelines/rl`` builds it from ``RLConfig``): the fields of
    :class:`ControllerConfig` (``checkpoint_every``: and at the last step) and

    Attributes:
        task, rollout, algorithm, reward, optim: the loop's parts.
        steps: policy updates of the whole run.
    """

    task: parts.TaskConfig = field(default_factory=parts.TaskConfig)
    rollout: parts.RolloutConfig = field(default_factory=parts.RolloutConfig)
    algorithm: parts.AlgorithmConfig = field(default_factory=parts.AlgorithmConfig)
    reward: parts.RewardConfig = field(default_factory=parts.RewardConfig)
    optim: parts.OptimConfig = field(default_factory=parts.OptimConfig)
    steps: int = 10


#: settings added after runs were first checkpointed, at the values those runs had
ADDED_SETTINGS = {"rollout": {"train_problems": 0, "replay": False}}


def backfilled(recorded: dict | None) -> dict | None:
    """A checkpoint's recorded settings with :data:`ADDED_SETTINGS` it predates filled in, so a
    run saved before they existed resumes (it ran with exactly those values)."""
    if not isinstance(recorded, dict):
        return recorded
    filled = dict(recorded)
    for section, defaults in ADDED_SETTINGS.items():
        if isinstance(filled.get(section), dict):
            filled[section] = defaults | filled[section]
    return filled


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train entry point: ``config["loop"]`` is a :class:`LoopConfig`."""
    cfg: LoopConfig = config["loop"]
    with controller.worker_run(cfg, RLRun, cfg.rollout.timeout_s, "rl-") as (run, engines, dist, scratch):
        if run.rank == 0:  # the engines start from the trainer's weights (restored ones after a resume)
            engines.load_weights(run.trainer.sync_state(), run.step)
        for _ in range(run.step, cfg.steps):
            metrics = run.step_once(engines, dist)
            report(run, metrics, scratch)


def report(run: RLRun, metrics: dict, scratch: Path) -> None:
    """Report the step's metrics to Ray Train, with a checkpoint every ``checkpoint_every`` steps."""
    cfg = run.cfg
    if run.rank == 0:
        print(progress_line(metrics, cfg.steps), flush=True)
    due = not run.step % cfg.checkpoint_every or run.step == cfg.steps
    controller.report_step(run, metrics, scratch, checkpoint=due)


def progress_line(m: dict, steps: int) -> str:
    """One console line per step."""
    return (
        f"[tandem rl] step {m['step']}/{steps}: reward {m['reward/mean']:.3f}, strict accuracy "
        f"{m['accuracy/strict']:.2f}, length {m['completions/mean_length']:.1f}, entropy {m['entropy']:.3f}, "
        f"logprob diff {m['rollout_train_logprob_diff/max']:.1e}, rollout {m['rollout/tok_per_s']:.0f} tok/s "
        f"({m['spec/tokens_per_step']:.2f} tokens/step), step {m['timing/step_s']:.0f}s"
    )


class RLRun(controller.ControllerRun):
    """One worker's side of the run (see :class:`ControllerRun`): the policy trainer, the step
    counter, the history."""

    def __init__(self, cfg: LoopConfig, rank: int, world: int, device: torch.device):
        super().__init__(cfg, rank, world, device)
        rollout = cfg.rollout
        batch = rollout.problems_per_step * rollout.n
        if batch % world:
            raise ValueError(f"rollout.problems_per_step × rollout.n = {batch} must split over {world} ranks")
        mini = cfg.optim.ppo_mini_batch_size or batch
        if batch % mini or mini % world:
            raise ValueError(f"optim.ppo_mini_batch_size={mini} must divide {batch} and split over {world}")
        self.mini_batches = batch // mini
        loaded = load_model(cfg.model, "float32")
        self.tokenizer = loaded.tokenizer
        policy = loaded.model.to(device)
        reference = copy.deepcopy(policy) if cfg.algorithm.use_kl_loss else None
        micro_steps = -(-(mini // world) // cfg.optim.micro_batch_size)
        self.trainer = PolicyTrainer(
            policy,
            cfg.optim,
            cfg.algorithm,
            rollout.temperature,
            world=world,
            strategy=cfg.strategy,
            reference=reference,
            micro_steps=micro_steps,
            wrap=self.ddp_wrap,
        )
        self.task = build_task(cfg.task.name, **cfg.task.knobs)
        self.prompter = Prompter(self.tokenizer, self.task, cfg.task.few_shot, cfg.task.response_prefix)
        self.gate = AccuracyGate(cfg.reward.acc_tolerance)
        self.step, self.history = 0, []
        #: (problem index, sample) -> its last completion, drafted as its replay hint
        #: (``rollout.replay``; rank 0 rolls out, so only rank 0 fills it)
        self.replay: dict[tuple[int, int], list[int]] = {}

    # -- one step -------------------------------------------------------------------------

    def step_once(self, engines, dist) -> dict:
        """Rollout (rank 0) → broadcast → update on every worker → sync (rank 0)."""
        began = time.perf_counter()
        payload = [self.rollout(engines) if self.rank == 0 else None]
        if dist is not None:
            dist.broadcast_object_list(payload, src=0)
        samples, scores, metrics = payload[0]
        metrics["timing/train_s"] = -time.perf_counter()
        metrics |= self.update(samples, scores, dist)
        metrics["timing/train_s"] += time.perf_counter()
        self.step += 1
        if self.rank == 0:
            metrics["timing/sync_s"] = engines.load_weights(self.trainer.sync_state(), self.step)
        if dist is not None:
            dist.barrier()
        metrics |= {"step": self.step, "policy_version": self.step}
        metrics["timing/step_s"] = time.perf_counter() - began
        self.history.append(metrics)
        return metrics

    def rollout(self, engines) -> tuple[list[Sample], list[float], dict]:
        """This step's groups (with DAPO's filter: more rounds until enough informative ones),
        their rewards and advantages, flattened, and the rollout metrics."""
        cfg, rollout = self.cfg, self.cfg.rollout
        params = controller.sampling_params(rollout.max_new_tokens, rollout.temperature)
        keep, dropped, seconds, rounds = [], [], 0.0, 0
        filtering = cfg.algorithm.filter_groups
        while len(keep) < rollout.problems_per_step:
            began = time.perf_counter()
            groups = self.groups(engines, params, rounds)
            seconds += time.perf_counter() - began
            rounds += 1
            for group in groups:
                ok = not filtering.enable or informative(group, filtering.metric)
                (keep if ok else dropped).append(group)
            if not filtering.enable or rounds >= filtering.max_num_gen_batches:
                break
        groups = (keep + dropped)[: rollout.problems_per_step]  # short of informative ones: fill
        began = time.perf_counter()
        metrics = rollout_metrics(groups, seconds, rounds, len(dropped))
        metrics |= apply_length_reward(groups, cfg.reward, self.gate, rollout.max_new_tokens)
        scores = advantages(groups, cfg.algorithm)
        metrics["reward/mean"] = sum(s.reward for g in groups for s in g) / sum(len(g) for g in groups)
        metrics["timing/reward_s"] = time.perf_counter() - began
        samples = [s for g in groups for s in g]
        return samples, scores.flatten().tolist(), metrics

    def groups(self, engines, params: SamplingParams, round_: int) -> list[list[Sample]]:
        """One round of problems (indices unique per step and round) and their samples."""
        cfg, count = self.cfg, self.cfg.rollout.problems_per_step
        first = (self.step * cfg.algorithm.filter_groups.max_num_gen_batches + round_) * count
        problems = [self.task.problem(cfg.seed, self.problem_index(first + i)) for i in range(count)]
        prefix = cfg.task.response_prefix
        prompts = [self.prompter(p) for p in problems]

        def seeds(index: int, k: int) -> int:
            return sample_seed(cfg.seed, self.step, index, k, cfg.rollout.seed_mode)

        hints = (lambda index, k: self.replay.get((index, k), [])) if cfg.rollout.replay else None
        groups = collect(
            engines.generate, self.task, problems, prompts, cfg.rollout.n, params, seeds, prefix, hints
        )
        stale = {s.policy_version for g in groups for s in g} - {self.step}
        if stale:
            raise RuntimeError(f"step {self.step}: rollouts came from policy version(s) {sorted(stale)}")
        if cfg.rollout.replay:
            for group in groups:
                for k, sample in enumerate(group):
                    self.replay[(sample.problem.index, k)] = sample.token_ids
        return groups

    def problem_index(self, draw: int) -> int:
        """The problem of the ``draw``-th draw of the run: itself, or with a finite training set
        (``rollout.train_problems``) its place in the cycle through it."""
        size = self.cfg.rollout.train_problems
        return draw % size if size else draw

    def update(self, samples: list[Sample], scores: list[float], dist) -> dict:
        """This worker's share of every mini-batch, for ``ppo_epochs`` passes; the step's metrics."""
        optim = self.cfg.optim
        size = len(samples) // self.mini_batches
        sums: list[dict] = []
        for _ in range(optim.ppo_epochs):
            for start in range(0, len(samples), size):
                mini = samples[start : start + size]
                totals = StepTotals(  # the mini-batch over every worker: one optimizer step
                    tokens=sum(len(s.token_ids) for s in mini),
                    seqs=len(mini),
                    max_tokens=self.cfg.rollout.max_new_tokens,
                )
                mine = list(range(start, start + size))[self.rank :: self.world]
                local = [samples[i] for i in mine], [scores[i] for i in mine]
                batches = micro_batches(*local, optim.micro_batch_size)
                sums.append(self.trainer.update(batches, totals, self.device))
        return reduce_update(sums, dist)

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)  # a worker with nothing to write reports it empty
        state = {"step": self.step, "history": self.history, "gate": self.gate.state_dict()}
        return self.trainer.save(folder, state | {"config": self.cfg.expanded}, self.rank)

    def restore(self, folder: Path) -> None:
        state = self.trainer.restore(folder)
        controller.check_settings(backfilled(state.get("config")), self.cfg.expanded, folder)
        self.step, self.history = int(state["step"]), list(state["history"])
        self.gate.load_state_dict(state["gate"])

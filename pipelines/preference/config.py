"""Settings of ``tandem preference`` (``configs/preference_*.yaml``): the loop's parts
(``actors/trainers/preference/config.py``), the pairs' source, the engine actors, the workers,
held-out evaluation and storage. Names and defaults are TRL's where TRL has them."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.trainers.preference.config import LossConfig, SamplingConfig, TrainConfig
from pipelines.common.job_config import EngineJobConfig

FORMATS = ("auto", "parquet", "jsonl")


@dataclass
class DataConfig:
    """Where the pairs come from.

    Attributes:
        dataset: a Parquet or JSONL file, folder or glob, local or ``s3://``, with the columns
            ``prompt`` (a string) or ``messages`` (chat turns ``{role, content}``), ``chosen`` and
            ``rejected`` (strings, or a list of one assistant message, TRL's conversational
            form). A bad row is reported by its row number with the reason and left out; the
            rest are used. Empty = on-policy pairs sampled by the engine actors every round.
        format: ``auto`` (by file suffix), ``parquet`` or ``jsonl``.
        max_length: prompt + completion tokens at most (TRL ``max_length``); a longer row is
            reported and left out, never truncated.
    """

    dataset: str = ""
    format: str = "auto"
    max_length: int = 1024

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if self.max_length < 2:
            raise ValueError(f"data.max_length must be >= 2, got {self.max_length}")


@dataclass
class EvalConfig:
    """Held-out evaluation at the start and the end of the run.

    Attributes:
        problems: held-out task problems answered greedily (``strict_accuracy``,
            ``mean_length``); 0 = none.
        seed: their seed, distinct from training's so no training problem is evaluated.
        max_new_tokens: tokens per greedy answer (0 = ``sampling.max_new_tokens``).
        pair_problems: on-policy runs (no ``data.dataset``): held-out problems of ``seed``
            whose samples from the starting policy make the held-out pairs (``pair_accuracy``);
            0 = none.
        pairs: dataset runs (``pair_problems`` unused): valid rows held out (a seeded choice)
            as the held-out pairs.
    """

    problems: int = 100
    seed: int = 1_000_003
    max_new_tokens: int = 0
    pair_problems: int = 32
    pairs: int = 0

    def __post_init__(self) -> None:
        if min(self.problems, self.max_new_tokens, self.pair_problems, self.pairs) < 0:
            raise ValueError("eval.problems, max_new_tokens, pair_problems and pairs must be >= 0")


@dataclass
class PreferenceConfig(EngineJobConfig):
    """Everything ``tandem preference`` runs: the fields of :class:`EngineJobConfig` (engine,
    placement, task — on-policy pairs and the held-out strict accuracy —, workers, seed, storage,
    name, ``checkpoint_every`` — also at the end of every round —, ``sync_timeout_s``,
    ``metrics_out`` — with the bad rows too —, s3 — datasets and checkpoints) and

    Attributes:
        data: the pairs' source (a dataset, or on-policy).
        sampling: on-policy pairs.
        loss: the preference loss (``loss_type``, ``beta``, ...).
        train: the update.
        eval: held-out evaluation.
        rounds: iterative rounds: after each, the policy is synced into the live engine actors
            and the next round's pairs are sampled on-policy from it (a dataset feeds round 0).
    """

    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rounds: int = 1
    storage_path: str = "~/.cache/tandem/preference"
    name: str = "preference"
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        self.check_job(0 if self.data.dataset else self.sampling.max_new_tokens, "sampling.max_new_tokens")
        if self.train.batch_size % self.workers.num_workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must split over "
                f"workers.num_workers={self.workers.num_workers}"
            )

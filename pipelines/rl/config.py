"""Settings of ``tandem rl`` (``configs/rl_*.yaml``): the loop's parts (``actors/trainers/rl/config.py``),
the engine actors, the workers, evaluation and storage.

Names follow veRL (and TRL where veRL has none); each field's docstring names its equivalent.
``preset`` (``grpo``, ``dapo``, ``dr_grpo``, ``dler``) expands to explicit values under what the
file and the command line set; the run records the expanded values and refuses to resume a run
that had other ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine_config import EngineConfig
from actors.trainers.rl.config import (
    AlgorithmConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    TaskConfig,
)
from pipelines.common.storage import StoreConfig
from pipelines.common.training import WorkersConfig
from pipelines.graph import Placement


@dataclass
class EvalConfig:
    """Held-out evaluation at the start and the end of the run (greedy).

    Attributes:
        problems: held-out problems (0 = no evaluation).
        seed: their seed, distinct from training's so no training problem is evaluated.
        max_new_tokens: tokens per answer (0 = ``rollout.max_new_tokens``).
        speculation_problems: at the start and the end, roll out this many problems of step 0
            (``rollout.n`` samples each, the run's seeds) with ``engine.drafter`` and with none,
            in the driver: tokens compared (they must be equal), tok/s and tokens per verifier
            step reported (0 = skip).
    """

    problems: int = 200
    seed: int = 1_000_003
    max_new_tokens: int = 0
    speculation_problems: int = 0

    def __post_init__(self) -> None:
        if min(self.problems, self.max_new_tokens, self.speculation_problems) < 0:
            raise ValueError("eval.problems, eval.max_new_tokens and eval.speculation_problems must be >= 0")


PRESETS: dict[str, dict] = {
    "grpo": {"algorithm": {"adv_estimator": "grpo", "clip_ratio_high": 0.2, "loss_agg_mode": "token-mean"}},
    "dapo": {
        "algorithm": {
            "adv_estimator": "grpo",
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.28,
            "loss_agg_mode": "token-mean",
            "use_kl_loss": False,
            "filter_groups": {"enable": True, "metric": "reward"},
        },
        "reward": {"length": "dapo_overlong"},
    },
    "dr_grpo": {
        "algorithm": {"adv_estimator": "dr_grpo", "loss_agg_mode": "seq-mean-token-sum-norm"},
    },
    "dler": {
        "algorithm": {
            "adv_estimator": "batch",
            "clip_ratio_high": 0.28,
            "filter_groups": {"enable": True, "metric": "reward"},
        },
        "reward": {"length": "dler"},
    },
}


@dataclass
class RLConfig:
    """Everything ``tandem rl`` runs.

    Attributes:
        preset: ``grpo``, ``dapo``, ``dr_grpo`` or ``dler``: values expanded under the given ones.
        engine: the policy model and the rollout engine (drafter, dtype, KV cache size).
        verifier: where each engine (verifier) actor runs.
        drafter: where each drafter actor runs (``ngram`` and ``model:`` drafters).
        task: the verifiable task.
        rollout: sampling.
        algorithm: advantages and loss.
        reward: the length-aware term.
        optim: the update.
        workers: the Ray Train worker group (``ddp`` or ``deepspeed`` ZeRO-2).
        eval: held-out evaluation.
        steps: policy updates (veRL ``trainer.total_training_steps``).
        seed: the run's seed: problems, sampling seeds and the trainer all derive from it.
        storage_path: where checkpoints live, local or ``s3://``; the run is ``storage_path/name``
            and a run of the same name resumes from its latest checkpoint.
        name: the run's name.
        checkpoint_every: save every this many steps (and at the end).
        sync_timeout_s: a weight sync slower than this fails the run (never hangs).
        metrics_out: a JSON file with the expanded config, the per-step history and the
            evaluations (and a PNG of the curves beside it); empty = none.
        s3: object-store endpoint and credentials.
    """

    PRESETS = PRESETS

    preset: str = "grpo"
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_batch_size=32, max_model_len=1024))
    verifier: Placement = field(default_factory=Placement)
    drafter: Placement = field(default_factory=lambda: Placement(num_cpus=0.0))
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 20
    seed: int = 0
    storage_path: str = "~/.cache/tandem/rl"
    name: str = "rl"
    checkpoint_every: int = 5
    sync_timeout_s: float = 300.0
    metrics_out: str = ""
    s3: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError("steps and checkpoint_every must be >= 1")
        if not self.name.strip() or "/" in self.name:
            raise ValueError("name must be a plain name (no '/')")
        if self.rollout.replay and self.engine.drafter == "none":
            raise ValueError(
                "rollout.replay drafts through the engine's drafter, and engine.drafter=none drafts "
                "nothing: use engine.drafter=ngram (the replay chain is merged into its trees)"
            )
        room = self.rollout.max_new_tokens + self.engine.max_draft_nodes + 1
        if room >= self.engine.max_model_len:
            raise ValueError(
                f"engine.max_model_len={self.engine.max_model_len} leaves no room for a prompt: "
                f"rollout.max_new_tokens + engine.max_draft_nodes + 1 = {room}"
            )

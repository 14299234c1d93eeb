"""Settings of ``tandem rl`` (``configs/rl_*.yaml``): the loop's parts (``actors/trainers/rl/config.py``),
the engine actors, the workers, evaluation and storage.

Names follow veRL (and TRL where veRL has none); each field's docstring names its equivalent.
``preset`` (``grpo``, ``dapo``, ``dr_grpo``, ``dler``) expands to explicit values under what the
file and the command line set; the run records the expanded values and refuses to resume a run
that had other ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.trainers.rl.config import AlgorithmConfig, OptimConfig, RewardConfig, RolloutConfig
from pipelines.common.job_config import EngineJobConfig


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
class RLConfig(EngineJobConfig):
    """Everything ``tandem rl`` runs: the fields of :class:`EngineJobConfig` (engine, placement,
    task, workers, seed, storage, name, ``checkpoint_every``, ``sync_timeout_s``,
    ``metrics_out``, s3) and

    Attributes:
        preset: ``grpo``, ``dapo``, ``dr_grpo`` or ``dler``: values expanded under the given ones.
        rollout: sampling.
        algorithm: advantages and loss.
        reward: the length-aware term.
        optim: the update.
        eval: held-out evaluation.
        steps: policy updates (veRL ``trainer.total_training_steps``).
    """

    PRESETS = PRESETS

    preset: str = "grpo"
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 20
    storage_path: str = "~/.cache/tandem/rl"
    name: str = "rl"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        self.check_job(self.rollout.max_new_tokens, "rollout.max_new_tokens")
        if self.rollout.replay and self.engine.drafter == "none":
            raise ValueError(
                "rollout.replay drafts through the engine's drafter, and engine.drafter=none drafts "
                "nothing: use engine.drafter=ngram (the replay chain is merged into its trees)"
            )

"""Settings of the RL loop's parts (task, rollout, algorithm, reward, update), composed by
``pipelines/rl/config.py``'s ``RLConfig``. Names follow veRL (and TRL where veRL has none); each
field's docstring names its equivalent."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.trainers.rl.advantages import ADV_ESTIMATORS
from actors.trainers.rl.losses import LOSS_AGG_MODES
from actors.trainers.rl.tasks import build_task

LENGTH_REWARDS = ("none", "short_rl", "kimi", "dler", "dapo_overlong")
SEED_MODES = ("fresh", "coupled")


@dataclass
class TaskConfig:
    """The procedural, verifiable task (nothing downloaded).

    Attributes:
        name: ``arithmetic``, ``countdown`` or ``knights`` (knights and knaves).
        knobs: the task's difficulty settings, e.g. ``{digits: 2, terms: 3, ops: "+-*"}``
            (arithmetic), ``{max_count: 4}`` (countdown), ``{people: 3}`` (knights).
        response_prefix: text the reply starts with, put after the chat template's generation
            prompt (e.g. ``<answer>``: a small chat model that never writes the tag unprompted
            is then scored on the answer, not on learning the tag); the completion the policy
            is trained on starts after it, and the scorer reads prefix + completion.
        few_shot: worked examples shown as earlier chat turns before each problem (problems of
            their own seed; the task's ``demonstration`` shows how an answer reads).
    """

    name: str = "arithmetic"
    knobs: dict = field(default_factory=dict)
    response_prefix: str = ""
    few_shot: int = 0

    def __post_init__(self) -> None:
        if self.few_shot < 0:
            raise ValueError(f"task.few_shot must be >= 0, got {self.few_shot}")
        try:
            build_task(self.name, **self.knobs)
        except (TypeError, ValueError) as error:
            raise ValueError(f"task: {error}") from None


@dataclass
class RolloutConfig:
    """How rollouts are sampled by the engine actors.

    Attributes:
        n: samples per problem (veRL ``actor_rollout_ref.rollout.n``, TRL ``num_generations``);
            a group for the advantage, >= 2.
        problems_per_step: problems per step (veRL ``data.train_batch_size``).
        max_new_tokens: completion length cap (veRL ``data.max_response_length``, TRL
            ``max_completion_length``); the engine is checked at start to fit prompt + this + a tree.
        temperature: sampling temperature (veRL ``rollout.temperature``); top-p/top-k are not
            offered: truncated sampling biases the importance ratio.
        seed_mode: ``fresh`` (a new seed per sample per step) or ``coupled`` (sample k of problem
            i has the same seed at every step: its noise is shared across steps).
        engines: engine actors (each a verifier and its drafter); worker r uses engine r % engines.
        timeout_s: a rollout call slower than this fails the step (never hangs).
        train_problems: a finite training set of this many problems (indices ``0..N-1`` of the
            run's seed), drawn in order and cycled, one epoch every ``N / problems_per_step``
            steps (veRL ``data.train_files`` with ``trainer.total_epochs``, unshuffled); 0 = a
            new problem at every draw (problems never recur). At least ``problems_per_step``.
        replay: replay drafts (SPEC-RL's idea, kept lossless): sample k of a problem is drafted
            from its completion the last time that problem was rolled out, as a chain the
            verifier checks as usual, up to the first token where the new sample differs. Needs
            ``seed_mode=coupled`` (same seed, same noise, so the old completion is the new one
            wherever the policy has not moved) and ``train_problems`` (problems must recur);
            samples are the same with it on or off, only the verifier steps change. The last
            completion per (problem, sample) is kept in rank 0's memory, not in checkpoints: a
            resumed run replays from its second epoch on.
    """

    n: int = 4
    problems_per_step: int = 8
    max_new_tokens: int = 128
    temperature: float = 1.0
    seed_mode: str = "fresh"
    engines: int = 1
    timeout_s: float = 900.0
    train_problems: int = 0
    replay: bool = False

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"rollout.n must be >= 2 (a group needs two samples), got {self.n}")
        for key in ("problems_per_step", "max_new_tokens", "engines"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 for RL sampling, got {self.temperature}")
        if self.seed_mode not in SEED_MODES:
            raise ValueError(f"rollout.seed_mode must be one of {SEED_MODES}, got {self.seed_mode!r}")
        if self.train_problems < 0:
            raise ValueError(f"rollout.train_problems must be >= 0, got {self.train_problems}")
        if self.train_problems and self.train_problems < self.problems_per_step:
            raise ValueError(
                f"rollout.train_problems={self.train_problems} must be 0 or >= rollout.problems_per_step="
                f"{self.problems_per_step} (a step would hold a problem twice)"
            )
        if self.replay and self.seed_mode != "coupled":
            raise ValueError(
                "rollout.replay needs rollout.seed_mode=coupled: with fresh seeds a previous "
                "completion is another sample's, and its drafts would be rejected"
            )
        if self.replay and not self.train_problems:
            raise ValueError(
                "rollout.replay needs rollout.train_problems > 0: without a finite training set "
                "no problem is rolled out twice, so there is nothing to replay"
            )


@dataclass
class FilterGroupsConfig:
    """DAPO dynamic sampling (veRL ``algorithm.filter_groups``).

    Attributes:
        enable: drop groups whose ``metric`` is the same for every sample and draw more problems.
        metric: ``reward`` or ``correct``.
        max_num_gen_batches: rollout rounds per step at most (0 = unbounded is refused).
    """

    enable: bool = False
    metric: str = "reward"
    max_num_gen_batches: int = 4

    def __post_init__(self) -> None:
        if self.metric not in ("reward", "correct"):
            raise ValueError(f"algorithm.filter_groups.metric must be reward or correct, got {self.metric!r}")
        if self.max_num_gen_batches < 1:
            raise ValueError("algorithm.filter_groups.max_num_gen_batches must be >= 1")


@dataclass
class AlgorithmConfig:
    """Advantages and the policy loss.

    Attributes:
        adv_estimator: ``grpo``, ``dr_grpo``, ``rloo``, ``batch`` or ``bnpo`` (veRL
            ``algorithm.adv_estimator``).
        norm_adv_by_std_in_grpo: divide by the group's std in ``grpo`` (veRL's name; False is
            Dr. GRPO's advantage).
        filter_groups: DAPO dynamic sampling.
        clip_ratio_low: PPO ε below 1 (veRL ``actor.clip_ratio_low``).
        clip_ratio_high: PPO ε above 1 (veRL ``actor.clip_ratio_high``; DAPO clip-higher 0.28).
        clip_ratio_c: dual-clip bound for negative advantages (veRL ``actor.clip_ratio_c``).
        loss_agg_mode: ``token-mean`` (over the step's global token count), ``seq-mean-token-mean``
            or ``seq-mean-token-sum-norm`` (veRL ``actor.loss_agg_mode``).
        use_kl_loss: add β·KL to a frozen reference (veRL ``actor.use_kl_loss``; TRL ``beta > 0``).
        kl_loss_coef: β (veRL ``actor.kl_loss_coef``).
        kl_loss_type: ``low_var_kl`` (k3) or ``kl`` (k1) (veRL ``actor.kl_loss_type``).
        entropy_coeff: entropy bonus (veRL ``actor.entropy_coeff``).
    """

    adv_estimator: str = "grpo"
    norm_adv_by_std_in_grpo: bool = True
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    entropy_coeff: float = 0.0

    def __post_init__(self) -> None:
        if self.adv_estimator not in ADV_ESTIMATORS:
            raise ValueError(
                f"algorithm.adv_estimator must be one of {sorted(ADV_ESTIMATORS)}, got {self.adv_estimator!r}"
            )
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(
                f"algorithm.loss_agg_mode must be one of {LOSS_AGG_MODES}, got {self.loss_agg_mode!r}"
            )
        if self.kl_loss_type not in ("low_var_kl", "kl"):
            raise ValueError(f"algorithm.kl_loss_type must be low_var_kl or kl, got {self.kl_loss_type!r}")
        if not (0 <= self.clip_ratio_low < 1 and self.clip_ratio_high >= 0 and self.clip_ratio_c > 1):
            raise ValueError("algorithm: need 0 <= clip_ratio_low < 1, clip_ratio_high >= 0 and c > 1")


@dataclass
class RewardConfig:
    """The length-aware term added to the task's reward.

    Attributes:
        length: ``none``; ``short_rl`` (arXiv 2505.12284: correct answers only, a tolerance band,
            on only while batch accuracy holds at its running best − ``acc_tolerance``); ``kimi``
            (Kimi 1.5's group length reward); ``dler`` (DLER: reward 0 beyond
            ``truncation_length``; pair it with ``algorithm.adv_estimator=batch``);
            ``dapo_overlong`` (DAPO's soft penalty in the last ``overlong_buffer`` tokens).
        length_coef: weight of the ``short_rl`` / ``kimi`` term.
        tolerance: ``short_rl``'s band in tokens above the group's shortest correct answer.
        acc_tolerance: ``short_rl``'s accuracy gate.
        truncation_length: ``dler``'s limit in tokens (0 = ``rollout.max_new_tokens``).
        overlong_buffer: ``dapo_overlong``'s buffer in tokens (veRL ``reward_model.overlong_buffer.len``).
        overlong_penalty_factor: its scale (veRL ``overlong_buffer.penalty_factor``).
    """

    length: str = "none"
    length_coef: float = 1.0
    tolerance: int = 0
    acc_tolerance: float = 0.05
    truncation_length: int = 0
    overlong_buffer: int = 32
    overlong_penalty_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.length not in LENGTH_REWARDS:
            raise ValueError(f"reward.length must be one of {LENGTH_REWARDS}, got {self.length!r}")
        if self.tolerance < 0 or self.truncation_length < 0 or self.overlong_buffer < 1:
            raise ValueError("reward: tolerance and truncation_length must be >= 0, overlong_buffer >= 1")


@dataclass
class OptimConfig:
    """The policy update.

    Attributes:
        lr: AdamW learning rate (veRL ``actor.optim.lr``).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup steps.
        grad_clip: global gradient-norm clip (veRL ``actor.grad_clip``).
        ppo_epochs: passes over each step's rollouts (veRL ``actor.ppo_epochs``).
        ppo_mini_batch_size: sequences per optimizer step (veRL ``actor.ppo_mini_batch_size``,
            counted in sequences here); 0 = the whole step (one update, ratio 1).
        micro_batch_size: sequences per forward on one worker (veRL
            ``ppo_micro_batch_size_per_gpu``); gradients accumulate over micro-batches.
        freeze_layers: keep the embeddings and the first this many decoder layers frozen (a
            smaller update and fewer bytes synced).
        threads: torch threads per train worker (0 = its reserved CPUs).
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    ppo_mini_batch_size: int = 0
    micro_batch_size: int = 8
    freeze_layers: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("optim.lr and optim.grad_clip must be > 0")
        if self.ppo_epochs < 1 or self.micro_batch_size < 1:
            raise ValueError("optim.ppo_epochs and optim.micro_batch_size must be >= 1")
        if min(self.ppo_mini_batch_size, self.freeze_layers, self.warmup_steps, self.threads) < 0:
            raise ValueError("optim.ppo_mini_batch_size, freeze_layers, warmup_steps, threads must be >= 0")

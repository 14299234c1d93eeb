"""Settings of the preference loop's parts (the loss, on-policy pairs, the update), composed by
``pipelines/preference/config.py``'s ``PreferenceConfig``. Names and defaults are TRL's
(``DPOConfig``, ``CPOConfig``) where TRL has them; each field's docstring names its equivalent."""

from __future__ import annotations

import math
from dataclasses import dataclass

from actors.trainers.preference.losses import PREFERENCE_LOSSES


@dataclass
class LossConfig:
    """The preference loss (:mod:`actors.trainers.preference.losses`).

    Attributes:
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``simpo`` (reference-free), ``robust`` (rDPO) or
            ``hinge`` (TRL ``DPOConfig.loss_type``; ``simpo`` is TRL ``CPOConfig.loss_type``).
        beta: β, the implicit reward's scale (TRL default 0.1; IPO's τ; SimPO's paper uses 2–2.5,
            so set it for ``simpo``).
        label_smoothing: ε, the assumed label-flip probability: conservative DPO for ``sigmoid``
            and ``simpo``, rDPO's noise rate for ``robust``; in [0, 0.5); must be 0 for ``ipo``
            and ``hinge`` (TRL ``label_smoothing``).
        simpo_gamma: SimPO's target reward margin γ (TRL ``CPOConfig.simpo_gamma``, 0.5).
        rpo_alpha: weight of an NLL term on the chosen completions, a token mean (TRL
            ``DPOConfig.rpo_alpha`` / ``CPOConfig.cpo_alpha``; 0 = none).
    """

    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    rpo_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_type not in PREFERENCE_LOSSES:
            raise ValueError(
                f"loss.loss_type must be one of {sorted(PREFERENCE_LOSSES)}, got {self.loss_type!r}"
            )
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        if PREFERENCE_LOSSES[self.loss_type].uses_label_smoothing:
            if not 0 <= self.label_smoothing < 0.5:
                raise ValueError(f"loss.label_smoothing must lie in [0, 0.5), got {self.label_smoothing}")
        elif self.label_smoothing:
            raise ValueError(
                f"loss.loss_type={self.loss_type} does not use loss.label_smoothing: set it to 0"
            )
        if self.rpo_alpha < 0:
            raise ValueError(f"loss.rpo_alpha must be >= 0, got {self.rpo_alpha}")

    @property
    def needs_reference(self) -> bool:
        return PREFERENCE_LOSSES[self.loss_type].needs_reference


@dataclass
class SamplingConfig:
    """On-policy pairs: the engine actors sample ``n`` completions per problem of the task.

    Attributes:
        n: completions per problem (>= 2).
        problems_per_round: problems sampled per round (a pure function of seed, round, index).
        max_new_tokens: completion length cap (TRL ``max_completion_length``).
        temperature: sampling temperature (> 0).
        pairs_per_problem: correctness pairs per problem at most: the i-th correct completion
            (in sample order) against the i-th incorrect one.
        length_pairs: also pair the shortest correct completion (chosen) with the longest
            correct one (rejected) when it is clearly shorter.
        length_ratio: "clearly shorter": chosen length <= this × rejected length.
        engines: engine actors (each a verifier and its drafter); requests split over them.
        timeout_s: a sampling or scoring call slower than this fails the run (never hangs).
    """

    n: int = 4
    problems_per_round: int = 32
    max_new_tokens: int = 64
    temperature: float = 1.0
    pairs_per_problem: int = 1
    length_pairs: bool = True
    length_ratio: float = 0.8
    engines: int = 1
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"sampling.n must be >= 2 (a pair needs two completions), got {self.n}")
        for key in ("problems_per_round", "max_new_tokens", "engines"):
            if getattr(self, key) < 1:
                raise ValueError(f"sampling.{key} must be >= 1, got {getattr(self, key)}")
        if self.pairs_per_problem < 0:
            raise ValueError("sampling.pairs_per_problem must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.length_ratio < 1:
            raise ValueError(f"sampling.length_ratio must lie in (0, 1), got {self.length_ratio}")


@dataclass
class TrainConfig:
    """The update (AdamW, per round).

    Attributes:
        lr: AdamW learning rate (TRL ``learning_rate``, default 1e-6).
        weight_decay: AdamW weight decay (TRL ``weight_decay``).
        warmup_steps: linear warm-up steps (TRL ``warmup_steps``).
        grad_clip: global gradient-norm clip (TRL ``max_grad_norm``).
        batch_size: pairs per optimizer step over every worker (TRL
            ``per_device_train_batch_size × gradient_accumulation_steps × world``); a round's
            pairs that do not fill a last step are left out of that epoch (a seeded shuffle per
            epoch decides which).
        micro_batch_size: pairs per forward on one worker (each pair is two rows); gradients
            accumulate over micro-batches with step-wide denominators.
        epochs: passes over each round's pairs (TRL ``num_train_epochs``, whose default is 3).
        freeze_layers: keep the embeddings and the first this many decoder layers frozen.
        threads: torch threads per train worker (0 = its reserved CPUs).
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    batch_size: int = 8
    micro_batch_size: int = 4
    epochs: int = 1
    freeze_layers: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("train.lr and train.grad_clip must be > 0")
        for key in ("batch_size", "micro_batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if min(self.warmup_steps, self.freeze_layers, self.threads) < 0:
            raise ValueError("train.warmup_steps, train.freeze_layers and train.threads must be >= 0")

"""The preference update: the RL policy trainer (AdamW, DDP or DeepSpeed ZeRO-2, micro-batch
accumulation, safetensors checkpoints, weight sync) with the preference loss in place of PPO's.

:class:`~actors.trainers.rl.policy.PolicyTrainer` owns everything but the loss, so this module
only overrides ``_loss``: the policy's summed log-probs of the chosen and rejected rows (one
forward over both), the loss of :func:`~actors.trainers.preference.losses.preference_loss` over
the step's pair count, and the optional NLL term over the step's chosen tokens. Both
denominators count the whole step over every worker, so the step's loss and gradient do not
depend on the micro-batch size or the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from actors.trainers.preference.batch import PairBatch
from actors.trainers.preference.config import LossConfig, TrainConfig
from actors.trainers.preference.losses import nll_loss, preference_loss
from actors.trainers.rl.config import AlgorithmConfig, OptimConfig
from actors.trainers.rl.policy import PolicyTrainer

#: metrics that are means over pairs (TRL's names), summed over micro-batches and workers
PAIR_MEANS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@dataclass
class PairTotals:
    """The step's denominators over every worker and micro-batch."""

    pairs: int
    chosen_tokens: int


def optim_config(train: TrainConfig) -> OptimConfig:
    """The RL trainer's update settings for ``train`` (one update per step: no PPO epochs)."""
    return OptimConfig(
        lr=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        grad_clip=train.grad_clip,
        micro_batch_size=train.micro_batch_size,
        freeze_layers=train.freeze_layers,
        threads=train.threads,
    )


class PreferenceTrainer(PolicyTrainer):
    """A policy, its optimizer and one worker's share of a preference step.

    Args:
        policy: a ``*ForCausalLM`` in float32 on its device.
        train: the update's settings.
        loss: the preference loss.
        world: data-parallel workers.
        strategy: ``ddp`` or ``deepspeed`` (ZeRO-2).
        micro_steps: micro-batches per update on every worker.
        wrap: wraps the objective for DDP; None with one worker.
    """

    def __init__(
        self,
        policy: nn.Module,
        train: TrainConfig,
        loss: LossConfig,
        world: int = 1,
        strategy: str = "ddp",
        micro_steps: int = 1,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ):
        # temperature 1: the reference log-probs are scored at temperature 1 too
        super().__init__(
            policy,
            optim_config(train),
            AlgorithmConfig(),
            1.0,
            world=world,
            strategy=strategy,
            micro_steps=micro_steps,
            wrap=wrap,
        )
        self.loss = loss

    def _loss(self, batch: PairBatch, totals: PairTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the step loss and its metric sums (pair-weighted)."""
        cfg, count = self.loss, batch.pairs
        logp, _ = self.objective(batch)
        sums = (logp * batch.mask).sum(-1)  # [2B]
        tokens = batch.mask.sum(-1)  # [2B]
        reference = (batch.ref_chosen, batch.ref_rejected) if cfg.needs_reference else (None, None)
        loss, metrics = preference_loss(
            cfg.loss_type,
            sums[:count],
            sums[count:],
            *reference,
            tokens[:count],
            tokens[count:],
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
            simpo_gamma=cfg.simpo_gamma,
            global_pairs=totals.pairs,
        )
        parts = {key: float(metrics[key]) * count for key in PAIR_MEANS}
        parts |= {"pairs": float(count), "loss": float(loss.detach())}
        if cfg.rpo_alpha:
            nll = nll_loss(sums[:count], tokens[:count], global_tokens=totals.chosen_tokens)
            loss = loss + cfg.rpo_alpha * nll
            parts["nll_loss"] = float(nll.detach())
        return loss, parts


def reduce_step(sums: dict, dist) -> dict:
    """The step's metrics over every worker: pair means of :data:`PAIR_MEANS`, the summed loss
    (and NLL), the grad norm and learning rate."""
    keys = ["pairs", "loss", *PAIR_MEANS] + (["nll_loss"] if "nll_loss" in sums else [])
    total = torch.tensor([sums[key] for key in keys], dtype=torch.float64)
    if dist is not None:
        dist.all_reduce(total)
    values = dict(zip(keys, total.tolist()))
    pairs = max(values.pop("pairs"), 1.0)
    out = {key: values[key] / pairs for key in PAIR_MEANS}
    out["loss"] = values["loss"]
    if "nll_loss" in values:
        out["nll_loss"] = values["nll_loss"]
    out["grad_norm"], out["learning_rate"] = sums["grad_norm"], sums["lr"]
    return out

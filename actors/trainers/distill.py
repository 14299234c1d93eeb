"""The distillation training loop: a student learns the verifier's next-token distributions.

:class:`Distiller` holds the student, its objective and optimizer; :func:`train` runs it from its
current step to the end, reporting metrics and checkpoints through a callback. Neither needs Ray:
:func:`train_loop_per_worker` (in ``actors/trainers/train_worker.py``) is the Ray Train entry point that
wires them to ``ray.train`` (DDP over gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actors.trainers.checkpoints import OPTIMIZER_FILE, load_checkpoint, save_checkpoint
from actors.trainers.data import TokenBatch, chain_steps, collate, step_rows
from actors.trainers.losses import LOSSES, distill_loss


@dataclass
class TrainConfig:
    """The training loop's settings.

    Attributes:
        loss: ``fkl`` (forward KL), ``rkl`` (reverse KL), ``jsd`` (generalised JSD) or ``tvd``
            (total variation); see ``actors/trainers/losses.py``.
        beta: JSD's weight on the teacher, in (0, 1).
        tail: compare distributions with a tail bucket (True) or renormalised over the top-k.
        learning_rate: peak AdamW learning rate.
        min_lr_ratio: the cosine schedule ends at ``learning_rate * min_lr_ratio``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        max_steps: optimizer steps of the whole run (the schedule's length).
        stop_at: end this run after this step although the schedule goes on to ``max_steps`` (a
            later run with the same storage resumes there); 0 = run to ``max_steps``.
        batch_size: sequences per optimizer step, over all workers (>= the number of workers).
        max_len: tokens per sequence at most (longer ones are cut); 0 = no limit.
        grad_clip: gradient norm clip; 0 = none.
        freeze_embeddings: keep the input embeddings (and a tied LM head) as the verifier's.
        log_every: report the mean training loss every this many steps.
        checkpoint_every: checkpoint and evaluate every this many steps (and at the end).
        eval_depth: drafted tokens per step of the greedy-chain acceptance proxy.
        seed: seeds the row order.
        threads: torch CPU threads per worker; 0 = leave torch's default.
    """

    loss: str = "fkl"
    beta: float = 0.5
    tail: bool = True
    learning_rate: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_steps: int = 200
    stop_at: int = 0
    batch_size: int = 8
    max_len: int = 1024
    grad_clip: float = 1.0
    freeze_embeddings: bool = True
    log_every: int = 10
    checkpoint_every: int = 50
    eval_depth: int = 8
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.loss == "jsd" and not 0 < self.beta < 1:
            raise ValueError(f"train.beta must be in (0, 1) for jsd, got {self.beta}")
        for key in ("max_steps", "batch_size", "log_every", "checkpoint_every", "eval_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("stop_at", "warmup_steps", "max_len", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.learning_rate <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("train.learning_rate must be > 0 and train.min_lr_ratio in [0, 1]")

    @property
    def last_step(self) -> int:
        """The step this run ends at."""
        return min(self.stop_at, self.max_steps) if self.stop_at else self.max_steps


class DistillObjective(nn.Module):
    """The student plus its loss, as one module (so DDP sees the whole forward)."""

    def __init__(self, student: PreTrainedModel, config: TrainConfig):
        super().__init__()
        self.student, self.config = student, config

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean divergence over the masked positions, and the student's argmax there.

        Args:
            input_ids: ``[B, L]``; mask: ``[B, L]`` bool; topk_ids, topk_probs: ``[B, L, k]``.

        Returns:
            The scalar loss and ``[M]`` argmax tokens at the ``M`` masked positions.
        """
        hidden = self.student.model(input_ids=input_ids).last_hidden_state  # [B, L, H]
        logits = self.student.lm_head(hidden[mask])  # [M, V]: the head only where it is needed
        kept = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        cfg = self.config
        loss = distill_loss(logits, topk_ids[mask], topk_probs[mask], kept, cfg.loss, cfg.beta, cfg.tail)
        return loss, logits.argmax(-1)


class Distiller:
    """A student, its objective (possibly wrapped for data parallelism) and its optimizer.

    Args:
        student: the student model (float32), on ``device``.
        config: the loop's settings.
        wrap: wraps the objective module (``ray.train.torch.prepare_model`` for DDP).
    """

    def __init__(
        self,
        student: PreTrainedModel,
        config: TrainConfig,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ):
        self.student, self.config = student.train(), config
        if config.freeze_embeddings:
            student.get_input_embeddings().requires_grad_(False)
        trainable = [p for p in student.parameters() if p.requires_grad]
        self.objective, self.optimizer = self._prepare(DistillObjective(student, config), trainable, wrap)
        self.device = next(student.parameters()).device
        self.step = 0
        self.history: list[dict] = []

    def _prepare(
        self, objective: nn.Module, trainable: list[nn.Parameter], wrap: Callable | None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module that computes the loss (``objective``, wrapped) and the optimizer."""
        cfg = self.config
        optimizer = torch.optim.AdamW(
            trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, foreach=False
        )
        return (wrap(objective) if wrap else objective), optimizer

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr_ratio`` of it."""
        cfg = self.config
        return warmup_cosine(step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)

    def train_step(self, batch: TokenBatch) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        batch = batch.to(self.device)
        loss, _ = self.objective(batch.input_ids, batch.mask, batch.topk_ids, batch.topk_probs)
        self._update(loss)
        self.step += 1
        return float(loss.detach())

    def _update(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and take the optimizer step (gradients clipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, rows: list[dict]) -> dict:
        """Held-out ``val_loss``, ``val_top1`` (the student's argmax is the teacher's) and
        ``val_tokens_per_step``: greedy speculative decoding's tokens per verifier step with an
        ``eval_depth``-token chain of the student's argmaxes (a proxy of the engine's acceptance)."""
        if not rows:
            return {}
        objective = DistillObjective(self.student, self.config).eval()
        losses, matches, tokens, steps = [], 0, 0, 0
        for first in range(0, len(rows), self.config.batch_size):
            chunk = rows[first : first + self.config.batch_size]
            batch = collate(chunk, self.config.max_len).to(self.device)
            loss, argmax = objective(batch.input_ids, batch.mask, batch.topk_ids, batch.topk_probs)
            losses.append((float(loss), int(batch.mask.sum())))
            hits = (argmax == batch.topk_ids[batch.mask][:, 0]).cpu()
            for row_hits in hits.split(batch.mask.sum(1).tolist()):
                matches += int(row_hits.sum())
                tokens += len(row_hits)
                steps += chain_steps(row_hits.tolist(), self.config.eval_depth)
        self.student.train()
        positions = sum(n for _, n in losses)
        return {
            "val_loss": sum(v * n for v, n in losses) / max(positions, 1),
            "val_top1": matches / max(tokens, 1),
            "val_tokens_per_step": tokens / max(steps, 1),
        }

    def save(
        self, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None, rank: int = 0
    ) -> Path | None:
        """Write a checkpoint into ``folder``; called on every worker, the folder is returned by
        those that wrote into it (here worker 0: the others hold the same state)."""
        if rank:
            return None
        state = {"step": self.step, "history": self.history}
        return save_checkpoint(folder, self.student, tokenizer, self.optimizer, state)

    def restore(self, folder: str | Path) -> None:
        if not (Path(folder) / OPTIMIZER_FILE).is_file():
            raise ValueError(
                f"checkpoint {folder} has no {OPTIMIZER_FILE}: it was saved with another "
                "workers.strategy; resume it with that strategy"
            )
        state = load_checkpoint(folder, self.student, self.optimizer)
        self.step, self.history = int(state["step"]), list(state.get("history", []))


def warmup_cosine(step: int, peak: float, warmup: int, total: int, floor: float) -> float:
    """The learning rate of ``step`` (from 0): linear warm-up to ``peak`` over ``warmup`` steps,
    then cosine decay to ``floor · peak`` at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


#: report(metrics, checkpoint folder or None): called by every worker the same number of times
Report = Callable[[dict, "Path | None"], None]


def train(
    distiller: Distiller,
    train_rows: list[dict],
    val_rows: list[dict],
    report: Report,
    save_to: Callable[[int], Path],
    tokenizer: PreTrainedTokenizerBase | None = None,
    rank: int = 0,
    world: int = 1,
) -> Distiller:
    """Train from ``distiller.step`` to the config's last step.

    Every ``log_every`` steps each worker calls ``report`` with the mean loss since the last
    report (and ``started_at``, the step this run started from); every ``checkpoint_every``
    steps and at the end, worker 0 also evaluates on ``val_rows``, and the workers that write a
    checkpoint into ``save_to(step)`` (:meth:`Distiller.save`) pass that folder (Ray Train merges
    them). A fresh run first reports the untrained student's
    held-out metrics (step 0); a resumed one first reports the step it resumed from.
    """
    cfg = distiller.config
    started_at = distiller.step
    if cfg.batch_size < world:
        raise ValueError(f"train.batch_size ({cfg.batch_size}) must be >= the number of workers ({world})")
    if distiller.step == 0 and not distiller.history:
        metrics = {"step": 0, **distiller.evaluate(val_rows)} if rank == 0 else {"step": 0}
        distiller.history.append(metrics)
        report(metrics | {"started_at": 0}, None)
    else:  # resumed: say from where, even when nothing is left to do
        report({"step": started_at, "started_at": started_at}, None)
    losses: list[float] = []
    while distiller.step < cfg.last_step:
        picked = step_rows(len(train_rows), cfg.batch_size, distiller.step, cfg.seed, rank, world)
        lr = distiller.learning_rate(distiller.step)
        losses.append(distiller.train_step(collate([train_rows[i] for i in picked], cfg.max_len)))
        step = distiller.step
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.last_step
        if not (checkpoint or step % cfg.log_every == 0):
            continue
        metrics = {"step": step, "loss": sum(losses) / len(losses), "lr": lr, "started_at": started_at}
        losses = []
        if checkpoint and rank == 0:
            metrics |= distiller.evaluate(val_rows)
        if rank == 0:
            distiller.history.append(metrics)
        folder = distiller.save(save_to(step), tokenizer, rank) if checkpoint else None
        report(metrics, folder)
    return distiller

"""The policy update of one RL step: trainer log-probs, the PPO-clip loss over micro-batches with
step-wide denominators, and AdamW under DDP or DeepSpeed ZeRO-2.

The denominators (``global_tokens``, ``global_seqs``) count the whole step over every worker, so
the loss and its gradient do not change with the micro-batch size or the number of workers; DDP
and ZeRO *average* gradients over ``world`` workers, so each worker's loss is scaled by ``world``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from actors.trainers.checkpoints import STATE_FILE, load_checkpoint, save_checkpoint, save_student_state
from actors.trainers.rl.batch import PolicyBatch
from actors.trainers.rl.config import AlgorithmConfig, OptimConfig
from actors.trainers.rl.losses import agg_loss, kl_k1, kl_k3, policy_loss, token_logprobs
from actors.weights import load_in_place

CLIP_KEYS = ("clip_ratio/low", "clip_ratio/high", "clip_ratio/dual")
ZERO_FOLDER, ZERO_TAG = "deepspeed", "state"  # as actors/trainers/zero.py writes them


class PolicyObjective(nn.Module):
    """The policy as one module whose forward gives the completion tokens' log-probs and entropy,
    so that DDP / DeepSpeed see the whole forward."""

    def __init__(self, policy: nn.Module, temperature: float):
        super().__init__()
        self.policy, self.temperature = policy, temperature

    def forward(self, batch: PolicyBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp, entropy)``, both ``[B, T]``, of ``batch.targets`` at ``batch.positions``."""
        hidden = self.policy.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]
        index = batch.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        logits = self.policy.lm_head(hidden.gather(1, index))  # the head only where it is needed
        return token_logprobs(logits, batch.targets, self.temperature)


@dataclass
class StepTotals:
    """The step's denominators, over every worker and micro-batch."""

    tokens: int
    seqs: int
    max_tokens: int


def trainable_parameters(policy: nn.Module, freeze_layers: int) -> list[nn.Parameter]:
    """Freeze the input embeddings (and a tied LM head) and the first ``freeze_layers`` decoder
    layers when ``freeze_layers > 0``; return what stays trainable (everything else)."""
    policy.requires_grad_(True)  # a loaded model comes frozen, for inference
    if freeze_layers:
        policy.get_input_embeddings().requires_grad_(False)
        for layer in policy.model.layers[:freeze_layers]:
            layer.requires_grad_(False)
    return [p for p in policy.parameters() if p.requires_grad]


class PolicyTrainer:
    """A policy, its reference (for the KL term), its optimizer and one worker's share of a step.

    Args:
        policy: a ``*ForCausalLM`` in float32 on its device.
        optim: the update's settings.
        algorithm: the loss's settings.
        temperature: the rollouts' sampling temperature.
        world: data-parallel workers.
        strategy: ``ddp`` or ``deepspeed`` (ZeRO-2).
        reference: a frozen copy for the KL term (needed when ``algorithm.use_kl_loss``).
        micro_steps: micro-batches per update on every worker (DeepSpeed accumulates over
            exactly this many; DDP takes any number).
        wrap: wraps the objective for DDP (``ray.train.torch.prepare_model``, or
            ``DistributedDataParallel`` in a process group of one's own); None with one worker.
    """

    def __init__(
        self,
        policy: nn.Module,
        optim: OptimConfig,
        algorithm: AlgorithmConfig,
        temperature: float,
        world: int = 1,
        strategy: str = "ddp",
        reference: nn.Module | None = None,
        micro_steps: int = 1,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ):
        if algorithm.use_kl_loss and reference is None:
            raise ValueError("algorithm.use_kl_loss needs a reference model")
        self.policy, self.optim, self.algorithm = policy.train(), optim, algorithm
        self.world, self.strategy, self.temperature = world, strategy, temperature
        self.micro_steps = micro_steps
        self.reference = reference.eval().requires_grad_(False) if reference is not None else None
        self.trainable = trainable_parameters(policy, optim.freeze_layers)
        self.trainable_names = [n for n, p in policy.named_parameters() if p.requires_grad]
        objective = PolicyObjective(policy, temperature)
        if strategy == "deepspeed":
            self.objective, self.optimizer = self._deepspeed(objective)
        else:
            self.objective = wrap(objective) if wrap is not None else objective
            self.optimizer = torch.optim.AdamW(self.trainable, lr=optim.lr, weight_decay=optim.weight_decay)
        self.updates = 0  # optimizer steps so far (the learning-rate schedule's clock)

    def _deepspeed(self, objective: nn.Module):
        import deepspeed

        config = {
            # micro-batches are built here (their sizes vary); DeepSpeed counts them and reduces
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": self.micro_steps,
            "train_batch_size": self.micro_steps * self.world,
            "gradient_clipping": self.optim.grad_clip,
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": self.optim.lr, "weight_decay": self.optim.weight_decay, "torch_adam": True},
            },
            "zero_optimization": {"stage": 2},
            "steps_per_print": 1 << 30,
        }
        engine, optimizer, _, _ = deepspeed.initialize(
            model=objective, model_parameters=self.trainable, config=config
        )
        return engine, optimizer

    def learning_rate(self) -> float:
        """Linear warm-up to ``optim.lr``, then constant."""
        warmup = self.optim.warmup_steps
        return self.optim.lr * min(1.0, (self.updates + 1) / warmup) if warmup else self.optim.lr

    def update(self, batches: list[PolicyBatch], totals: StepTotals, device: torch.device) -> dict:
        """One optimizer step over this worker's micro-batches; summed metrics (see :meth:`_loss`)
        plus ``grad_norm`` and ``lr``. Every worker calls it with the same number of micro-batches."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        sums = self.accumulate(batches, totals, device)
        sums["grad_norm"] = self._step()
        sums["lr"] = self.optimizer.param_groups[0]["lr"]
        self.updates += 1
        return sums

    def accumulate(self, batches: list[PolicyBatch], totals: StepTotals, device: torch.device) -> dict:
        """Backward over the micro-batches, gradients accumulated (and, under DDP, reduced at the
        last); the metric sums. :meth:`update` without the optimizer step (DeepSpeed steps its
        engine at the accumulation boundary itself)."""
        if self.strategy == "deepspeed" and len(batches) != self.micro_steps:
            raise ValueError(f"DeepSpeed accumulates {self.micro_steps} micro-batches, got {len(batches)}")
        sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            with self._accumulating(last=i == len(batches) - 1):
                loss, parts = self._loss(batch.to(device), totals)
                self._backward(loss * self.world)
            for key, value in parts.items():
                merge = max if key.endswith("/max") else lambda a, b: a + b
                sums[key] = merge(sums[key], value) if key in sums else value
        return sums

    def _loss(self, batch: PolicyBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the step loss and its metric sums (token-weighted)."""
        algo, mask = self.algorithm, batch.mask
        logp, entropy = self.objective(batch)
        # One update per step: the ratio is 1 (old = logp). Several: the behaviour policy's own
        # log-probs, which the engine returned (equal to the trainer's before the update).
        single = self.optim.ppo_epochs == 1 and not self.optim.ppo_mini_batch_size
        old = logp.detach() if single else batch.engine_logp
        denominators = {
            "global_tokens": totals.tokens,
            "global_seqs": totals.seqs,
            "max_tokens": totals.max_tokens,
        }
        loss, clip = policy_loss(
            logp,
            old,
            batch.advantages,
            mask,
            clip_ratio_low=algo.clip_ratio_low,
            clip_ratio_high=algo.clip_ratio_high,
            clip_ratio_c=algo.clip_ratio_c,
            loss_agg_mode=algo.loss_agg_mode,
            **denominators,
        )
        tokens = float(mask.sum())
        diff = (logp.detach() - batch.engine_logp).abs()[mask]
        parts = {
            "tokens": tokens,
            "pg_loss": float(loss.detach()),
            "entropy": float(entropy.detach()[mask].sum()),
            "rollout_train_logprob_diff/sum": float(diff.sum()),
            "rollout_train_logprob_diff/max": float(diff.max()) if diff.numel() else 0.0,
            **{key: float(clip[key]) * tokens for key in CLIP_KEYS},
        }
        if algo.entropy_coeff:
            loss = loss - algo.entropy_coeff * agg_loss(entropy, mask, algo.loss_agg_mode, **denominators)
        if algo.use_kl_loss:
            with torch.no_grad():
                ref_logp, _ = PolicyObjective(self.reference, self.temperature)(batch)
            kl = (kl_k3 if algo.kl_loss_type == "low_var_kl" else kl_k1)(logp, ref_logp)
            loss = loss + algo.kl_loss_coef * agg_loss(kl, mask, algo.loss_agg_mode, **denominators)
            parts["kl"] = float(kl.detach()[mask].sum())
        return loss, parts

    def _accumulating(self, last: bool):
        """DDP reduces gradients once, at the last micro-batch."""
        if isinstance(self.objective, nn.parallel.DistributedDataParallel) and not last:
            return self.objective.no_sync()
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.strategy == "deepspeed":
            self.objective.backward(loss, scale_wrt_gas=False)  # the denominators already count
            self.objective.step()  # steps only at the accumulation boundary
        else:
            loss.backward()

    def _step(self) -> float:
        if self.strategy == "deepspeed":
            return float(self.objective.get_global_grad_norm() or 0.0)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def sync_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights under the model's own names (what the engine actors load)."""
        params = dict(self.policy.named_parameters())
        return {name: params[name].detach().cpu().clone() for name in self.trainable_names}

    def save(self, folder: Path, state: dict, rank: int) -> Path:
        """Write a checkpoint: the policy as a Hugging Face folder (safetensors), the optimizer
        state (safetensors; with ZeRO every worker writes its partition) and ``state`` as JSON."""
        state = state | {"strategy": self.strategy, "updates": self.updates}
        if self.strategy == "deepspeed":
            self.objective.save_checkpoint(str(folder / ZERO_FOLDER), tag=ZERO_TAG)
            if rank == 0:
                save_student_state(folder, self.policy, None, state)
        elif rank == 0:
            save_checkpoint(folder, self.policy, None, self.optimizer, state)
        return folder

    def restore(self, folder: Path) -> dict:
        """Load a checkpoint written by :meth:`save` with the same strategy; its ``state``."""
        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("strategy") != self.strategy:
            raise ValueError(
                f"checkpoint {folder} was saved with workers.strategy={state.get('strategy')}; resume with it"
            )
        if self.strategy == "deepspeed":
            load_weights(folder, self.policy)
            path, _ = self.objective.load_checkpoint(str(folder / ZERO_FOLDER), tag=ZERO_TAG)
            if path is None:
                raise ValueError(f"DeepSpeed found no state in {folder / ZERO_FOLDER} for this worker")
        else:
            state = load_checkpoint(folder, self.policy, self.optimizer)
        self.updates = int(state["updates"])
        return state


def load_weights(folder: Path, policy: nn.Module) -> None:
    """The policy weights of a checkpoint folder, copied in place (the checks of
    :func:`actors.weights.load_in_place`: every key the policy's, every shape its own)."""
    from safetensors.torch import load_file

    weights: dict = {}
    for file in sorted(folder.glob("model*.safetensors")):
        weights |= load_file(file)
    load_in_place(policy, weights)

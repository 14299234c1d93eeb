"""DeepSpeed ZeRO-2 distillation (``workers.strategy=deepspeed``).

ZeRO stage 2 partitions the student's gradients and AdamW moments over the data-parallel
workers, each keeping the full float32 weights: the optimizer state per worker shrinks with the
number of workers, and the update is DDP's (the mean gradient, clipped, then AdamW). DeepSpeed
picks its accelerator: CUDA with NCCL on GPUs, its CPU accelerator with gloo elsewhere.

A checkpoint keeps the weights and ``trainer_state.json`` of ``actors/trainers/checkpoints.py``
(so it still loads as a drafter folder), and the optimizer state in DeepSpeed's own partitioned
format under ``deepspeed/``: every worker writes its partition there, and Ray Train merges the
workers' folders into one checkpoint. A run resumes with the number of workers that saved it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actors.trainers.checkpoints import STATE_FILE, save_student_state
from actors.trainers.distill import Distiller, TrainConfig

ZERO_FOLDER = "deepspeed"
_TAG = "state"


def zero_config(config: TrainConfig, world: int) -> dict:
    """DeepSpeed's configuration for ``config`` over ``world`` workers (ZeRO stage 2, float32).
    The learning rate here is the peak: the loop sets each step's on the optimizer's groups."""
    micro = max(1, config.batch_size // world)
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world,
        "gradient_clipping": config.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": config.learning_rate, "weight_decay": config.weight_decay, "torch_adam": True},
        },
        "zero_optimization": {"stage": 2},
        "steps_per_print": 1 << 30,  # the loop reports progress itself
    }


class ZeroDistiller(Distiller):
    """A :class:`Distiller` whose objective and optimizer are a DeepSpeed ZeRO-2 engine; needs a
    ``torch.distributed`` process group (Ray Train's, or one set up by the caller).

    Args:
        student: the student model (float32), on its device.
        config: the loop's settings.
        world: the number of data-parallel workers.
    """

    def __init__(self, student: PreTrainedModel, config: TrainConfig, world: int):
        self.world = world
        super().__init__(student, config)

    def _prepare(
        self, objective: nn.Module, trainable: list[nn.Parameter], wrap: Callable | None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            model=objective, model_parameters=trainable, config=zero_config(self.config, self.world)
        )
        return engine, optimizer

    def _update(self, loss: torch.Tensor) -> None:
        self.objective.backward(loss)
        self.objective.step()

    def save(self, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None, rank: int = 0) -> Path:
        """Every worker writes its optimizer partition; worker 0 also the weights and the state."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.objective.save_checkpoint(str(folder / ZERO_FOLDER), tag=_TAG)
        if rank == 0:
            state = {"step": self.step, "history": self.history, "strategy": "deepspeed"}
            save_student_state(folder, self.student, tokenizer, state)
        return folder

    def restore(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not (folder / ZERO_FOLDER).is_dir():
            raise ValueError(
                f"checkpoint {folder} has no DeepSpeed state ({ZERO_FOLDER}/): it was saved by another "
                "workers.strategy; resume it with that strategy"
            )
        path, _ = self.objective.load_checkpoint(str(folder / ZERO_FOLDER), tag=_TAG)
        if path is None:
            raise ValueError(f"DeepSpeed found no state in {folder / ZERO_FOLDER} for this worker")
        state = json.loads((folder / STATE_FILE).read_text())
        self.step, self.history = int(state["step"]), list(state.get("history", []))

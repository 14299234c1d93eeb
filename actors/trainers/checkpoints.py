"""Distillation checkpoints: a folder that is at once a loadable drafter and a resumable state.

Layout (every tensor in safetensors, nothing pickled):

- ``config.json``, ``generation_config.json``, ``model.safetensors``, tokenizer files: the
  student as a Hugging Face folder (``--drafter model:PATH`` loads it as it is);
- ``optimizer/state.safetensors``: the optimizer's per-parameter state, keyed by parameter name
  (in a subfolder, so that readers of a folder's ``*.safetensors`` see only the weights);
- ``trainer_state.json``: the step, the metrics so far, the optimizer's hyperparameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer/state.safetensors"


def save_checkpoint(
    folder: str | Path,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    optimizer: torch.optim.Optimizer,
    state: dict,
) -> Path:
    """Write the student, the optimizer state and ``state`` (JSON-able: ``step``, ``history``...)."""
    tensors, groups = optimizer_tensors(student, optimizer)
    folder = save_student_state(folder, student, tokenizer, state | {"param_groups": groups})
    (folder / OPTIMIZER_FILE).parent.mkdir(exist_ok=True)
    save_file(tensors, folder / OPTIMIZER_FILE)
    return folder


def save_student_state(
    folder: str | Path, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, state: dict
) -> Path:
    """The part of a checkpoint every strategy shares: the student as a Hugging Face folder (a
    drafter as it is), the tokenizer and ``state`` in :data:`STATE_FILE`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    return folder


def optimizer_tensors(student: PreTrainedModel, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """The optimizer's state as ``{"<param name>.<key>": tensor}`` and its param groups' settings."""
    names = {id(p): n for n, p in student.named_parameters()}
    tensors = {}
    for param, slots in optimizer.state.items():
        for key, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{names[id(param)]}.{key}"] = value.detach().cpu().contiguous()
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return tensors, groups


def load_checkpoint(folder: str | Path, student: PreTrainedModel, optimizer: torch.optim.Optimizer) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``student`` and ``optimizer``
    (built the same way as when it was saved); return its state (``step``, ``history``...)."""
    folder = Path(folder)
    weights = {}
    for file in sorted(folder.glob("model*.safetensors")):
        weights |= load_file(file)
    result = student.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if student.config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ValueError(f"checkpoint {folder} does not fit the student: {result}")
    state = json.loads((folder / STATE_FILE).read_text())
    params = dict(student.named_parameters())
    saved = load_file(folder / OPTIMIZER_FILE)
    for key, value in saved.items():
        name, slot = key.rsplit(".", 1)
        # Adam's step count stays on the CPU (torch's default for non-capturable optimizers).
        optimizer.state[params[name]][slot] = value if slot == "step" else value.to(params[name].device)
    for group, settings in zip(optimizer.param_groups, state.pop("param_groups")):
        group.update(settings)
    return state

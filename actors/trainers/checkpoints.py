"""Distillation checkpoints: a folder that is at once a loadable drafter and a resumable state.

Layout (every tensor in safetensors, every other value in JSON, nothing pickled):

- ``config.json``, ``generation_config.json``, ``model.safetensors``, tokenizer files: the
  student as a Hugging Face folder (``--drafter model:PATH`` loads it as it is);
- ``optimizer/state.safetensors``: the optimizer's per-parameter state, keyed by parameter name
  (in a subfolder, so that readers of a folder's ``*.safetensors`` see only the weights);
- ``trainer_state.json``: the step, the metrics so far, the optimizer's hyperparameters.

:func:`save_optimizer` and :func:`load_optimizer` write and read the optimizer part for any
named parameters; the heads trainer (``actors/trainers/heads.py``) keeps its optimizer with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
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
    groups = save_optimizer(folder, student.named_parameters(), optimizer)
    return save_student_state(folder, student, tokenizer, state | {"param_groups": groups})


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


def save_optimizer(
    folder: str | Path, named_params: Iterable[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer
) -> list[dict]:
    """Write ``optimizer``'s per-parameter state to ``folder/``:data:`OPTIMIZER_FILE` (safetensors,
    keyed ``"<param name>.<slot>"``); return its param groups' settings, JSON-able, for the caller
    to keep in its JSON state (:func:`load_optimizer` takes them back)."""
    names = {id(param): name for name, param in named_params}
    tensors = {}
    for param, slots in optimizer.state.items():
        for slot, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{names[id(param)]}.{slot}"] = value.detach().cpu().contiguous()
    path = Path(folder) / OPTIMIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def load_optimizer(
    folder: str | Path,
    named_params: Iterable[tuple[str, nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    groups: list[dict],
) -> None:
    """Load what :func:`save_optimizer` wrote into ``optimizer`` (built over the same parameters),
    with ``groups`` the settings it returned."""
    path = Path(folder) / OPTIMIZER_FILE
    if not path.is_file():
        raise ValueError(f"checkpoint {folder} has no {OPTIMIZER_FILE}: it cannot resume training")
    params = dict(named_params)
    for key, value in load_file(path).items():
        name, slot = key.rsplit(".", 1)
        # Adam's step count stays on the CPU (torch's default for non-capturable optimizers).
        optimizer.state[params[name]][slot] = value if slot == "step" else value.to(params[name].device)
    for group, settings in zip(optimizer.param_groups, groups, strict=True):
        group.update(settings)


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
    load_optimizer(folder, student.named_parameters(), optimizer, state.pop("param_groups"))
    return state

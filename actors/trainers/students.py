"""Students to distill into a drafter: a small causal LM cut out of the verifier.

The student keeps the verifier's architecture, tokenizer, embeddings, final norm and LM head,
and a few of its decoder layers. So it starts as an early-exit copy of the verifier (it already
agrees with it on easy tokens) and saves as an ordinary Hugging Face folder that loads as a
drafter with ``--drafter model:PATH``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from actors.models import load_model

LAYER_CHOICES = ("first", "spread")


@dataclass
class StudentConfig:
    """Which student to train.

    Attributes:
        init: an HF folder to start from (a drafter trained before); empty = cut a new student
            out of the verifier.
        num_layers: decoder layers of a new student.
        layer_choice: which verifier layers it copies: ``first`` or ``spread`` (see
            :func:`pick_layers`).
        layers: the verifier layers to copy, explicitly; wins over ``num_layers`` when not empty.
    """

    init: str = ""
    num_layers: int = 4
    layer_choice: str = "first"
    layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.layer_choice not in LAYER_CHOICES:
            raise ValueError(
                f"student.layer_choice must be one of {LAYER_CHOICES}, got {self.layer_choice!r}"
            )
        if self.num_layers < 1:
            raise ValueError(f"student.num_layers must be >= 1, got {self.num_layers}")


def build_student(
    config: StudentConfig, verifier: str, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student ``config`` describes (trainable, float32) and the verifier's tokenizer.

    Args:
        config: the student's settings.
        verifier: the verifier's model spec (``default``, an HF folder or a .gguf).
        dtype: the dtype the verifier is loaded in before its layers are copied.
    """
    if config.init:
        loaded = load_model(config.init, "float32")
        return loaded.model.train().requires_grad_(True), loaded.tokenizer
    loaded = load_model(verifier, dtype)
    total = loaded.model.config.num_hidden_layers
    layers = list(config.layers) or pick_layers(total, config.num_layers, config.layer_choice)
    return student_from_verifier(loaded.model, layers), loaded.tokenizer


def pick_layers(total: int, count: int, choice: str = "first") -> list[int]:
    """Which of the verifier's ``total`` decoder layers a ``count``-layer student copies.

    ``first``: layers ``0 .. count-1`` (an early exit); ``spread``: evenly spaced from the first to
    the last layer (the last layer is the one that shapes the LM head's input).
    """
    if not 1 <= count <= total:
        raise ValueError(f"student layers must be between 1 and {total}, got {count}")
    if choice not in LAYER_CHOICES:
        raise ValueError(f"layer choice must be one of {LAYER_CHOICES}, got {choice!r}")
    if choice == "first" or count == 1:
        return list(range(count))
    step = (total - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def student_from_verifier(verifier: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A Llama-family causal LM with the verifier's embeddings, final norm, LM head and the
    decoder layers ``layers`` (in that order), in float32, trainable, in train mode.

    Args:
        verifier: a ``*ForCausalLM`` with ``model.embed_tokens``, ``model.layers``, ``model.norm``
            and ``lm_head`` (Llama, Qwen2, Mistral).
        layers: indices of the verifier layers to copy.
    """
    total = verifier.config.num_hidden_layers
    if not layers or any(not 0 <= i < total for i in layers):
        raise ValueError(f"layers must be indices into the verifier's {total} layers, got {layers}")
    config = copy.deepcopy(verifier.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen2)
        config.layer_types = [config.layer_types[i] for i in layers]
    config.dtype = torch.float32
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    source = verifier.state_dict()
    state = {}
    for name in student.state_dict():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers.") :].split(".", 1)
            state[name] = source[f"model.layers.{layers[int(index)]}.{rest}"]
        else:
            state[name] = source[name]
    student.load_state_dict({k: v.float() for k, v in state.items()})
    student.generation_config = copy.deepcopy(verifier.generation_config)
    return student.train().requires_grad_(True)


def save_student(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Write ``student`` (safetensors + config) and the shared tokenizer as an HF folder that
    ``--drafter model:PATH`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

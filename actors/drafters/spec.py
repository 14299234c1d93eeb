"""Drafter names: ``ngram``, ``model:PATH``, ``heads:PATH``, ``ngram+heads:PATH``,
``early-exit[:LAYERS]`` or ``none``, parsed and checked without building anything."""

from __future__ import annotations

KINDS = ("ngram", "model", "heads", "ngram+heads", "early-exit", "none")
DEFAULT_EARLY_EXIT_LAYERS = 4


def parse_drafter(spec: str) -> tuple[str, str]:
    """``"model:/path"`` → ``("model", "/path")``; raises ValueError on an unknown kind."""
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(
            f"unknown drafter {spec!r}; choose one of: ngram, model:PATH, model:distilled, "
            "heads:PATH, ngram+heads:PATH, ngram+heads:distilled, early-exit[:LAYERS], none"
        )
    if kind in ("model", "heads", "ngram+heads") and not arg:
        raise ValueError(f"drafter '{kind}' needs a path: {kind}:PATH")
    if kind == "early-exit" and arg and not arg.isdigit():
        raise ValueError(f"early-exit layers must be an integer, got {arg!r}")
    return kind, arg

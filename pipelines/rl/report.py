"""An RL run's record: one JSON (expanded config, per-step history, evaluations) and a PNG of
the curves beside it (``pipelines/common/report.py`` writes both)."""

from __future__ import annotations

from pathlib import Path

from pipelines.common import report

PANELS = (
    ("reward", ("reward/mean", "reward/task_mean")),
    ("accuracy", ("accuracy/strict", "accuracy/lenient")),
    ("completion length (tokens)", ("completions/mean_length",)),
    ("entropy / KL", ("entropy", "kl")),
    ("rollout tok/s", ("rollout/tok_per_s",)),
    ("tokens per verifier step", ("spec/tokens_per_step",)),
)

#: the held-out evaluation's start and end, marked on the curves
HELD_OUT = ("accuracy", "strict_accuracy", "held-out strict (greedy)")


def write_record(path: str | Path, record: dict) -> tuple[Path, Path]:
    """Write ``record`` as JSON at ``path`` and its curves as ``path`` with ``.png``."""
    return report.write_record(path, record, PANELS, HELD_OUT)

"""A preference run's record: one JSON (expanded config, per-step history, bad rows, evaluations)
and a PNG of the curves beside it (``pipelines/common/report.py`` writes both)."""

from __future__ import annotations

from pathlib import Path

from pipelines.common import report

PANELS = (
    ("loss", ("loss",)),
    ("implicit rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("pair accuracy (train)", ("rewards/accuracies",)),
    ("policy log-probs (summed)", ("logps/chosen", "logps/rejected")),
    ("round samples", ("sampling/accuracy",)),
    ("completion length (tokens)", ("completions/mean_length",)),
)

#: the held-out evaluation's start and end, marked on the curves
HELD_OUT = ("pair accuracy (train)", "pair_accuracy", "held-out pair accuracy")


def write_record(path: str | Path, record: dict) -> tuple[Path, Path]:
    """Write ``record`` as JSON at ``path`` and its curves as ``path`` with ``.png``."""
    return report.write_record(path, record, PANELS, HELD_OUT)

"""A preference run's record: one JSON (expanded config, per-step history, bad rows, evaluations)
and a PNG of the curves beside it."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.common.report import figure

PANELS = (
    ("loss", ("loss",)),
    ("implicit rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("pair accuracy (train)", ("rewards/accuracies",)),
    ("policy log-probs (summed)", ("logps/chosen", "logps/rejected")),
    ("round samples", ("sampling/accuracy",)),
    ("completion length (tokens)", ("completions/mean_length",)),
)


def write_record(path: str | Path, record: dict) -> tuple[Path, Path]:
    """Write ``record`` as JSON at ``path`` and its curves as ``path`` with ``.png``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    plot = out.with_suffix(".png")
    plot_history(record["history"], record.get("eval", {}), plot)
    return out, plot


def plot_history(history: list[dict], evaluation: dict, path: Path) -> None:
    """Six panels over steps; held-out pair accuracy at the start and end as red markers."""
    with figure(path, 2, 3, size=(13, 6.5), dpi=100) as (_, axes):
        for ax, (title, keys) in zip(axes.flat, PANELS):
            for key in keys:
                points = [(row["step"], row[key]) for row in history if key in row]
                if points:
                    ax.plot(*zip(*points), marker=".", label=key)
            held_out = [evaluation.get(when, {}).get("pair_accuracy") for when in ("start", "end")]
            if title.startswith("pair accuracy") and None not in held_out:
                steps = [0, history[-1]["step"] if history else 0]
                ax.plot(steps, held_out, "r--o", label="held-out pair accuracy")
            ax.set(title=title, xlabel="step")
            if ax.has_data():
                ax.legend(fontsize=7)

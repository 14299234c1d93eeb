"""An RL run's record: one JSON (expanded config, per-step history, evaluations) and a PNG of
the curves beside it."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.common.report import figure

PANELS = (
    ("reward", ("reward/mean", "reward/task_mean")),
    ("accuracy", ("accuracy/strict", "accuracy/lenient")),
    ("completion length (tokens)", ("completions/mean_length",)),
    ("entropy / KL", ("entropy", "kl")),
    ("rollout tok/s", ("rollout/tok_per_s",)),
    ("tokens per verifier step", ("spec/tokens_per_step",)),
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
    """Six panels over steps; held-out strict accuracy at the start and end as red markers."""
    with figure(path, 2, 3, size=(13, 6.5), dpi=100) as (_, axes):
        for ax, (title, keys) in zip(axes.flat, PANELS):
            for key in keys:
                points = [(row["step"], row[key]) for row in history if key in row]
                if points:
                    ax.plot(*zip(*points), marker=".", label=key)
            if title == "accuracy" and {"start", "end"} <= set(evaluation):
                steps = [0, history[-1]["step"] if history else 0]
                values = [evaluation["start"]["strict_accuracy"], evaluation["end"]["strict_accuracy"]]
                ax.plot(steps, values, "r--o", label="held-out strict (greedy)")
            ax.set(title=title, xlabel="step")
            ax.legend(fontsize=7)

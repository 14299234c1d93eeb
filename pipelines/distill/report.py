"""A distillation run's record: its metrics as JSON and its training curve as a PNG beside it."""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipelines.distill.config import DistillConfig
    from pipelines.distill.job import Summary


def write_metrics(cfg: DistillConfig, summary: Summary) -> tuple[Path, Path]:
    """Write ``cfg.metrics_out`` (JSON: config, history, before/after acceptance, time) and the
    training curve next to it (same name, ``.png``); return both paths."""
    out = Path(cfg.metrics_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": {k: v for k, v in dataclasses.asdict(summary).items() if k != "history"},
        "history": summary.history,
        "config": dataclasses.asdict(cfg) | {"s3": None},
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }
    out.write_text(json.dumps(record, indent=1))
    plot = out.with_suffix(".png")
    plot_history(summary.history, summary.acceptance, plot)
    return out, plot


def plot_history(history: list[dict], acceptance: dict[str, float], path: Path) -> None:
    """Two panels over steps: training and held-out loss; held-out top-1 agreement and the
    greedy-chain tokens per step (with the engine's measured before/after as markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, accept_ax) = plt.subplots(1, 2, figsize=(10, 4))
    series = {
        key: [(row["step"], row[key]) for row in history if key in row] for key in history_keys(history)
    }
    for key, label in (("loss", "train loss"), ("val_loss", "held-out loss")):
        if series.get(key):
            loss_ax.plot(*zip(*series[key]), marker=".", label=label)
    loss_ax.set(xlabel="step", ylabel="divergence", title="loss")
    loss_ax.legend()
    if series.get("val_tokens_per_step"):
        accept_ax.plot(*zip(*series["val_tokens_per_step"]), marker="o", label="chain proxy: tokens/step")
    if acceptance:
        last = history[-1]["step"]
        accept_ax.scatter([0, last], [acceptance["before"], acceptance["after"]], color="red", zorder=3)
        accept_ax.plot(
            [0, last], [acceptance["before"], acceptance["after"]], "r--", label="engine: tokens/step"
        )
    if series.get("val_top1"):
        twin = accept_ax.twinx()
        twin.plot(*zip(*series["val_top1"]), color="gray", alpha=0.6, label="top-1 agreement")
        twin.set_ylabel("top-1 agreement")
        twin.legend(loc="lower right")
    accept_ax.set(xlabel="step", ylabel="tokens per verifier step", title="held-out acceptance")
    accept_ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def history_keys(history: list[dict]) -> list[str]:
    return sorted({key for row in history for key in row if key != "step"})

"""What every job and benchmark writes beside its numbers: the command that reproduces it, PNG
figures (one writer for all of them, and the training jobs' record with its curves) and its block
in a markdown file such as ``docs/benchmarks.md`` (one upsert for all of them)."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


def command_line(argv: list[str] | None = None) -> str:
    """The command that reproduces this run, rebuilt from ``sys.argv``: ``tandem NAME ...`` for
    the console script, ``python -m MODULE ...`` for a module run as a script."""
    argv = sys.argv if argv is None else argv
    program, args = Path(argv[0]), argv[1:]
    if program.name == "tandem":
        return shlex.join(["tandem", *args])
    parts = program.with_suffix("").parts
    if "pipelines" in parts:
        module = parts[parts.index("pipelines") :]
        module = module[:-1] if module[-1] == "__main__" else module
        return shlex.join(["python", "-m", ".".join(module), *args])
    return shlex.join(["python", *argv])


@contextlib.contextmanager
def figure(
    path: str | Path, rows: int = 1, cols: int = 1, size: tuple[float, float] = (6, 3.5), dpi: int = 110
) -> Iterator:
    """Draw into a fresh matplotlib figure (headless) and save it as ``path`` on exit.

    Yields ``(figure, axes)``; ``axes`` is one Axes for a 1×1 grid, else matplotlib's array.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


#: a figure's panels: ``(title, metric keys drawn in it)``, filled row by row
Panels = tuple[tuple[str, tuple[str, ...]], ...]


def write_record(
    path: str | Path, record: dict, panels: Panels, held_out: tuple[str, str, str]
) -> tuple[Path, Path]:
    """Write a training run's ``record`` (``history``: a row of metrics per step; ``eval``: its
    held-out evaluations) as JSON at ``path``, and its curves (:func:`plot_history`) as ``path``
    with ``.png``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    plot = out.with_suffix(".png")
    plot_history(record["history"], record.get("eval", {}), plot, panels, held_out)
    return out, plot


def plot_history(
    history: list[dict], evaluation: dict, path: Path, panels: Panels, held_out: tuple[str, str, str]
) -> None:
    """Six ``panels`` over steps (2×3); ``held_out = (panel title, metric, label)``: the metric of
    ``evaluation``'s ``start`` and ``end`` drawn as red markers in that panel, when both exist."""
    panel, metric, label = held_out
    with figure(path, 2, 3, size=(13, 6.5), dpi=100) as (_, axes):
        for ax, (title, keys) in zip(axes.flat, panels):
            for key in keys:
                points = [(row["step"], row[key]) for row in history if key in row]
                if points:
                    ax.plot(*zip(*points), marker=".", label=key)
            values = [evaluation.get(when, {}).get(metric) for when in ("start", "end")]
            if title == panel and None not in values:
                steps = [0, history[-1]["step"] if history else 0]
                ax.plot(steps, values, "r--o", label=label)
            ax.set(title=title, xlabel="step")
            if ax.has_data():
                ax.legend(fontsize=7)


def upsert_section(text: str, block: str, begin: str, end: str) -> str:
    """Put ``block`` in the section of ``text`` between ``begin`` and ``end``, replacing the
    block with the same first line (its ``###`` heading), else appending it.

    Only the text between the markers changes; the markers are appended when missing.
    """
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    section, tail = rest.split(end, 1)
    # a managed section holds only ``###`` blocks: text before the first heading is stale
    blocks = [part.strip("\n") for part in re.split(r"(?m)^(?=### )", section) if part.startswith("### ")]
    heading = block.splitlines()[0]
    if any(part.splitlines()[0] == heading for part in blocks):
        blocks = [block if part.splitlines()[0] == heading else part for part in blocks]
    else:
        blocks.append(block)
    return f"{head}{begin}\n" + "\n\n".join(blocks) + f"\n{end}{tail}"


def write_docs(path: str | Path, block: str, begin: str, end: str) -> None:
    """:func:`upsert_section` on the file at ``path`` (created with a title when missing)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(upsert_section(text, block, begin, end), encoding="utf-8")


def write_report(
    report: dict,
    out: str,
    docs: str | None,
    block: Callable[[], str],
    markers: tuple[str, str],
    plot: str | Path | None = None,
    draw: Callable[[Path], None] | None = None,
) -> None:
    """Write what a benchmark run was asked for, each only when its path is set: the JSON
    ``report`` at ``out``, the figure ``draw`` makes at ``plot``, and ``block()`` into the
    section of the markdown file ``docs`` between ``markers``. A plain run sets none of them
    and writes nothing (a user's first run must not edit the repository's docs)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if plot and draw is not None:
        draw(Path(plot))
    if docs:
        write_docs(docs, block(), *markers)

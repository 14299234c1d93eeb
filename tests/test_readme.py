"""The README tells the truth about the tree: every command runs as the module it names, and the
Layout section lists the package's folders."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_rows() -> list[tuple[str, str]]:
    """(tandem NAME, python -m MODULE) for every row of the Commands table that has both."""
    section = README.split("## Commands", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        tandem = re.match(r"\| `tandem ([a-z-]+)", line)
        module = re.search(r"`python -m ([a-z_.]+)`", line)
        if tandem and module:
            rows.append((tandem.group(1), module.group(1)))
    return sorted(set(rows))


def test_the_command_table_covers_every_command():
    assert {name for name, _ in command_rows()} == set(PIPELINES)


@pytest.mark.parametrize("name, module", command_rows())
def test_every_command_runs_as_its_module(name, module):
    """``python -m MODULE`` reaches ``tandem NAME``'s config: a bad key is refused by that name."""
    done = subprocess.run(
        [sys.executable, "-m", module, "no_such_key=1"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"tandem {name}: error:" in done.stderr and "no_such_key" in done.stderr, done.stderr[-2000:]


def layout_folders() -> set[str]:
    block = README.split("<!-- layout:begin -->", 1)[1].split("<!-- layout:end -->", 1)[0]
    return set(re.findall(r"(?m)^([a-z_/]+/)\s", block))


def tree_folders() -> set[str]:
    """Top-level folders of the repository and every Python package folder inside the code."""
    tops = {f"{p.name}/" for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    tops -= {f"{p.name}/" for p in ROOT.iterdir() if p.name.endswith(".egg-info") or p.name == "build"}
    packages = {
        f"{init.parent.relative_to(ROOT).as_posix()}/"
        for top in ("kernels", "actors", "pipelines")
        for init in (ROOT / top).rglob("__init__.py")
    }
    return tops | packages


def test_the_layout_section_matches_the_tree():
    assert layout_folders() == tree_folders()

"""The shared report helpers: the reproducing command line, the docs upsert, what a run writes."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.common.report import command_line, upsert_section, write_report

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def upsert(text: str, block: str) -> str:
    return upsert_section(text, block, BEGIN, END)


def test_command_line_reproduces_the_invocation(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/usr/bin/tandem", "bench", "--limit", "3"])
    assert command_line() == "tandem bench --limit 3"
    monkeypatch.setattr("sys.argv", ["/repo/pipelines/bench/latency.py", "configs/bench.yaml", "limit=3"])
    assert command_line() == "python -m pipelines.bench.latency configs/bench.yaml limit=3"
    monkeypatch.setattr("sys.argv", ["/repo/pipelines/bench/__main__.py", "limit=3"])
    assert command_line() == "python -m pipelines.bench limit=3"


def test_docs_section_replaces_only_its_own_block():
    other = "<!-- kernel-bench:begin -->\nkernel table\n<!-- kernel-bench:end -->\n"
    text = "# Benchmarks\n\nintro\n\n" + other
    first = upsert(text, "### key A\nold")
    assert first.startswith("# Benchmarks\n\nintro\n\n" + other) and BEGIN in first and END in first
    second = upsert(first, "### key B\nb")
    third = upsert(second, "### key A\nnew")
    assert other in third and "intro" in third
    section = third.split(BEGIN)[1].split(END)[0]
    assert "new" in section and "old" not in section and "### key B\nb" in section
    assert section.index("key A") < section.index("key B")  # replaced in place
    assert upsert(third, "### key A\nnew") == third


def test_docs_section_before_other_sections_leaves_them_alone():
    text = f"# B\n\n{BEGIN}\n### k\nx\n{END}\n\n<!-- kernel-bench:begin -->\nK\n<!-- kernel-bench:end -->\n"
    updated = upsert(text, "### k\ny")
    assert updated == text.replace("### k\nx", "### k\ny")


def test_write_report_writes_only_what_is_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    drawn = []
    write_report({"x": 1}, "", "", lambda: "### k\nx", (BEGIN, END), "", drawn.append)
    assert list(tmp_path.iterdir()) == [] and drawn == []  # a plain run writes nothing

    out, docs = tmp_path / "r" / "report.json", tmp_path / "docs" / "benchmarks.md"
    write_report({"x": 1}, str(out), str(docs), lambda: "### k\nx", (BEGIN, END), "plot.png", drawn.append)
    assert json.loads(out.read_text()) == {"x": 1} and drawn == [Path("plot.png")]
    assert f"{BEGIN}\n### k\nx\n{END}" in docs.read_text()

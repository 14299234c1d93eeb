"""Converting the GGUF model is safe when several processes do it at once (the driver and each
engine actor resolve ``default`` on a fresh machine)."""

from pathlib import Path

import pytest

from actors.models import publish_conversion


def finished(folder: Path, marker: str) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(marker)
    return folder


def test_the_first_conversion_moves_into_place(tmp_path):
    target = tmp_path / "model"
    assert publish_conversion(finished(tmp_path / "model.partial-a", "a"), target) == target
    assert (target / "config.json").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_later_conversion_keeps_the_first_and_drops_its_own(tmp_path):
    target = tmp_path / "model"
    publish_conversion(finished(tmp_path / "model.partial-a", "a"), target)
    (target / "weights.safetensors").write_text("w")  # a non-empty folder: rename cannot replace it
    publish_conversion(finished(tmp_path / "model.partial-b", "b"), target)
    assert (target / "config.json").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_broken_target_is_not_mistaken_for_a_finished_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "junk").write_text("x")  # no config.json: not a finished conversion
    with pytest.raises(OSError):
        publish_conversion(finished(tmp_path / "model.partial-b", "b"), target)

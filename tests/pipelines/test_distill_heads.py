"""``tandem distill-heads``: heads trained from a distill run's rows folder, written as a heads folder."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.drafters.heads import MedusaHeads
from pipelines.cli import main as cli
from pipelines.config import load_config
from pipelines.distill.heads import DistillHeadsConfig, main
from tests.actors.drafters.test_heads import counting_rows, counting_verifier


def test_heads_train_from_a_rows_folder_and_load(tmp_path, tiny_tokenizer):
    verifier = counting_verifier()
    verifier.save_pretrained(tmp_path / "verifier")
    tiny_tokenizer.save_pretrained(tmp_path / "verifier")
    rows = [r | {"split": "train"} for r in counting_rows(verifier, 32, 0)]
    rows += [r | {"split": "val"} for r in counting_rows(verifier, 8, 3)]
    rows = [r | {"id": f"r{i}", "source": "counting"} for i, r in enumerate(rows)]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "rows.parquet")
    overrides = [f"model={tmp_path / 'verifier'}", f"rows={tmp_path / 'data'}"]
    overrides += [f"output={tmp_path / 'heads'}", f"metrics_out={tmp_path / 'm.json'}"]
    overrides += [f"checkpoint={tmp_path / 'checkpoint'}"]
    overrides += ["heads.max_steps=40", "heads.learning_rate=1e-2"]
    history = main(load_config(DistillHeadsConfig, "configs/distill_heads.yaml", overrides))
    assert history[-1]["val_top1"][0] > history[0]["val_top1"][0] + 0.5
    assert MedusaHeads.load(tmp_path / "heads").num_heads == 3
    assert json.loads((tmp_path / "m.json").read_text())["history"] == history
    assert json.loads((tmp_path / "checkpoint" / "heads_state.json").read_text())["step"] == 40


def test_missing_rows_are_named(tmp_path, capsys):
    assert cli(["distill-heads", f"rows={tmp_path / 'none'}"]) == 2
    assert "tandem distill" in capsys.readouterr().err


def test_bad_keys_are_named():
    with pytest.raises(Exception, match="heads.colour"):
        load_config(DistillHeadsConfig, "configs/distill_heads.yaml", ["heads.colour=red"])

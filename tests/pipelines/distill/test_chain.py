"""``tandem distill`` and ``tandem distill-heads`` chain: the heads read the rows distill wrote."""

from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.distill.config import DistillConfig
from pipelines.distill.heads import DistillHeadsConfig


def rows_folder(cfg: DistillConfig) -> Path:
    return Path(cfg.storage_path).expanduser() / cfg.name / "data"


@pytest.mark.parametrize("files", [(None, None), ("configs/distill.yaml", "configs/distill_heads.yaml")])
def test_heads_read_the_rows_distill_writes(files):
    distill, heads = load_config(DistillConfig, files[0]), load_config(DistillHeadsConfig, files[1])
    assert Path(heads.rows).expanduser() == rows_folder(distill)

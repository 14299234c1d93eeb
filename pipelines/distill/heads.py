"""Medusa-style heads for the verifier, trained on the teacher rows of a ``tandem distill`` run.

    tandem distill-heads [configs/distill_heads.yaml] [key=value ...]

The rows are the distillation job's (``storage_path/name/data``, local or ``s3://``): its held-out
split stays held out. The verifier is frozen and its hidden states are computed once; the heads
(``actors/drafters/heads.py``) train in this process, and the result is a heads folder that
``--drafter heads:PATH`` loads. Metrics (held-out loss and per-head top-1 agreement) go to
``metrics_out`` as JSON. With ``checkpoint`` set, an interrupted run started again resumes there.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actors.models import load_model
from actors.trainers.data import read_rows
from actors.trainers.heads import HeadsConfig, train_heads
from pipelines.common.storage import StoreConfig, resolve

log = logging.getLogger(__name__)


@dataclass
class DistillHeadsConfig:
    """Settings of ``tandem distill-heads``.

    Attributes:
        model: the verifier (``default`` = embedded SmolLM2-135M-Instruct).
        dtype: its dtype while the heads train (they are saved in float32).
        rows: the teacher rows: a ``tandem distill`` run's ``storage_path/name/data`` folder.
        s3: object-store endpoint and credentials for ``s3://`` rows.
        heads: the heads and their training.
        output: the heads folder written (``--drafter heads:OUTPUT``).
        checkpoint: a folder saved at every evaluation and resumed from ("" = none).
        metrics_out: JSON with the settings, the held-out history and the wall time ("" = none).
    """

    model: str = "default"
    dtype: str = "float32"
    rows: str = "~/.cache/tandem/distill/smollm2/data"
    s3: StoreConfig = field(default_factory=StoreConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    output: str = "~/.cache/tandem/drafters/smollm2-heads"
    checkpoint: str = ""
    metrics_out: str = ""


def main(cfg: DistillHeadsConfig) -> list[dict]:
    began = time.perf_counter()
    fs, path = resolve(cfg.rows, cfg.s3)
    if fs.get_file_info(path).type.name != "Directory":
        raise FileNotFoundError(
            f"no teacher rows at {cfg.rows}: run `tandem distill` first (its teacher stage writes them)"
        )
    rows = read_rows(fs, path)
    train = [row for row in rows if row["split"] == "train"]
    val = [row for row in rows if row["split"] == "val"]
    log.info("distill-heads: %d training rows, %d held out", len(train), len(val))
    verifier = load_model(cfg.model, cfg.dtype).model
    heads, history = train_heads(
        verifier, train, val, cfg.heads, log=lambda m: log.info("heads: %s", m), checkpoint=cfg.checkpoint
    )
    folder = heads.float().save(Path(cfg.output).expanduser())
    log.info("distill-heads: wrote %s (--drafter heads:%s)", folder, folder)
    if cfg.metrics_out:
        report = {"config": asdict(cfg), "history": history, "seconds": time.perf_counter() - began}
        Path(cfg.metrics_out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.metrics_out).write_text(json.dumps(report, indent=1))
    return history


if __name__ == "__main__":
    from pipelines.cli import run

    sys.exit(run("distill-heads", sys.argv[1:]))

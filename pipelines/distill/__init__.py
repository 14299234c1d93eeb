"""Distill the drafter from the verifier: a Ray Data + Ray Train job.

    python -m pipelines.distill [configs/distill.yaml] key=value ...
    ray job submit --working-dir . -- python -m pipelines.distill configs/distill.yaml ...

Stages: prompts (local or ``s3://`` JSONL/Parquet, HumanEval by default) → Ray Data
``map_batches`` over verifier actors, which generate responses with the speculative engine and
record the verifier's top-k next tokens at every response position → Parquet rows in the run's
storage → Ray Train ``TorchTrainer`` (DDP or DeepSpeed ZeRO-2; FKL/RKL/JSD/TVD over the top-k)
with safetensors checkpoints in ``storage_path`` (a re-run of the same name resumes from the
latest) → the final drafter measured with the engine before/after, copied to ``output`` and
hot-swapped into live drafter actors.
"""

from pipelines.distill.config import DataConfig, DistillConfig, EvalConfig, WorkersConfig
from pipelines.distill.job import Summary, main

__all__ = ["CLI_FLAGS", "DataConfig", "DistillConfig", "EvalConfig", "Summary", "WorkersConfig", "main"]

CLI_FLAGS = {
    "--model": "engine.model",
    "--prompts": "data.prompts",
    "--storage-path": "storage_path",
    "--name": "name",
    "--output": "output",
    "--loss": "train.loss",
    "--max-steps": "train.max_steps",
}

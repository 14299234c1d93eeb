"""Preference optimisation on the actor graph: DPO, IPO, SimPO, robust/conservative DPO and hinge
(``tandem preference``).

    tandem preference configs/preference_dpo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m pipelines.preference configs/preference_dpo.yaml ...

Pairs come from a Parquet/JSONL dataset (local or ``s3://``; bad rows reported and left out) or
on-policy: the engine actors (verifier + drafter, the classes Serve runs) sample k completions
per problem of a verifiable task, and correct-vs-incorrect and short-vs-long correct answers
become pairs. Their reference log-probs are scored once, teacher-forced, by the same engines.
The rounds run in Ray Train workers (DDP or DeepSpeed ZeRO-2) with checkpoints in
``storage_path/name`` (a run of the same name resumes); after each round the policy is synced
into the live engines, which sample the next round's pairs. See ``docs/preference.md``.
"""

from pipelines.preference.config import DataConfig, EvalConfig, PreferenceConfig
from pipelines.preference.job import main

__all__ = ["CLI_FLAGS", "DataConfig", "EvalConfig", "PreferenceConfig", "main"]

CLI_FLAGS = {
    "--model": "engine.model",
    "--dataset": "data.dataset",
    "--loss-type": "loss.loss_type",
    "--beta": "loss.beta",
    "--rounds": "rounds",
    "--name": "name",
    "--storage-path": "storage_path",
    "--metrics-out": "metrics_out",
}

"""RL alignment on the actor graph: GRPO/DAPO-style policy optimisation with verifiable and
length-aware rewards (``tandem rl``).

    tandem rl configs/rl_grpo_arith.yaml [key=value ...]
    ray job submit --working-dir . -- python -m pipelines.rl configs/rl_grpo_arith.yaml ...

Engine actors (verifier + drafter, the classes Serve runs) roll out with speculation on: every
rollout is exactly the policy's own seeded sample, with its log-probs. The controller loop runs
in Ray Train workers (DDP or DeepSpeed ZeRO-2), syncs the new weights into the engines after
every update (version handshake, timeouts that raise) and checkpoints in ``storage_path/name``
(safetensors; a run of the same name resumes). See ``docs/rl.md``.
"""

from pipelines.rl.config import RLConfig
from pipelines.rl.job import main

__all__ = ["CLI_FLAGS", "RLConfig", "main"]

CLI_FLAGS = {
    "--model": "engine.model",
    "--drafter": "engine.drafter",
    "--preset": "preset",
    "--steps": "steps",
    "--name": "name",
    "--storage-path": "storage_path",
    "--metrics-out": "metrics_out",
}

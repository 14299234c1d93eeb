"""Held-out evaluation of the policy the engine actors hold: the implicit reward's accuracy on
held-out pairs, and greedy answers to held-out task problems (``pipelines/common/evaluate.py``).

The held-out pairs are made once, at the start, from the starting policy (on-policy runs: its
samples of ``eval.pair_problems`` problems of ``eval.seed``; dataset runs: ``eval.pairs`` rows
held out), and their reference log-probs are the starting policy's. The implicit reward of a
completion is the loss's own (``β·(lp − ref)`` summed, or SimPO's ``β·lp / n``); ``pair_accuracy``
is the fraction of pairs whose chosen reward is strictly higher (TRL's ``rewards/accuracies``),
so a DPO run starts at 0 (policy = reference: every margin is 0) and SimPO at the base model's
own length-normalised preference.
"""

from __future__ import annotations

import torch

from actors.trainers.preference.config import LossConfig
from actors.trainers.preference.losses import preference_loss
from actors.trainers.preference.pairs import Pair


def summed_logps(pairs: list[Pair], score) -> tuple[list[float], list[float]]:
    """The summed log-probs of every pair's chosen and rejected completion under ``score``."""
    prompts = [p.prompt_ids for p in pairs for _ in range(2)]
    completions = [ids for p in pairs for ids in (p.chosen_ids, p.rejected_ids)]
    per_token = score(prompts, completions)
    return [sum(row) for row in per_token[0::2]], [sum(row) for row in per_token[1::2]]


def pair_accuracy(pairs: list[Pair], score, loss: LossConfig) -> dict:
    """The implicit reward of the policy ``score`` holds on ``pairs`` (reference log-probs set):
    ``pair_accuracy``, ``pair_margin`` (mean chosen − rejected reward), the count ``pairs`` and
    ``pair_kinds`` (pairs of each kind)."""
    if not pairs:
        return {}
    chosen, rejected = summed_logps(pairs, score)

    def vector(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    _, metrics = preference_loss(
        loss.loss_type,
        vector(chosen),
        vector(rejected),
        vector([p.ref_chosen_logp for p in pairs]),
        vector([p.ref_rejected_logp for p in pairs]),
        vector([len(p.chosen_ids) for p in pairs]),
        vector([len(p.rejected_ids) for p in pairs]),
        beta=loss.beta,
        label_smoothing=loss.label_smoothing,
        simpo_gamma=loss.simpo_gamma,
    )
    return {
        "pair_accuracy": float(metrics["rewards/accuracies"]),
        "pair_margin": float(metrics["rewards/margins"]),
        "pairs": len(pairs),
        "pair_kinds": {kind: sum(p.kind == kind for p in pairs) for kind in sorted({p.kind for p in pairs})},
    }


def sampled_pairs(
    engines, task, prompter, sampling, seed: int, problems: int, response_prefix: str = ""
) -> list[Pair]:
    """On-policy pairs of problems ``0..problems-1`` of ``seed`` from the engines' current policy
    (``sampling.n`` seeded samples each, paired as in training)."""
    from actors.messages import SamplingParams
    from actors.trainers.preference.pairs import build_pairs
    from actors.trainers.rl.rollout import collect, sample_seed

    batch = [task.problem(seed, index) for index in range(problems)]
    params = SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        logprobs=True,
        require_full_length=True,
    )

    def seeds(index: int, k: int) -> int:
        return sample_seed(seed, 0, index, k, "fresh")

    prompts = [prompter(problem) for problem in batch]
    groups = collect(engines.generate, task, batch, prompts, sampling.n, params, seeds, response_prefix)
    return build_pairs(groups, sampling)[0]

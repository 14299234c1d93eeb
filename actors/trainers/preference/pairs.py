"""Preference pairs as token ids: built on-policy from scored samples (correctness pairs and
length pairs), given their reference log-probs by teacher-forced scoring, kept as JSON.

The scorer is anything with ``score(prompts, completions) -> list[list[float]]`` (per token,
temperature 1): an :class:`~actors.engine.Engine` in tests, the engine actors in the job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from actors.trainers.preference.config import SamplingConfig
from actors.trainers.rl.rollout import Sample

Score = Callable[[list[list[int]], list[list[int]]], list[list[float]]]

KINDS = ("correctness", "length", "dataset")


@dataclass
class Pair:
    """One preference: a prompt and two completions of it, the first preferred.

    Attributes:
        prompt_ids: the prompt in the chat template.
        chosen_ids: the preferred completion (ending with EOS when it ended the answer).
        rejected_ids: the other one.
        kind: ``correctness`` (a correct vs an incorrect answer), ``length`` (both correct, the
            chosen clearly shorter) or ``dataset``.
        source: where it came from: the problem index, or the dataset row number.
        ref_chosen_logp: the reference's summed log-prob of ``chosen_ids`` (None until scored;
            unused by reference-free losses).
        ref_rejected_logp: the same for ``rejected_ids``.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    kind: str
    source: int
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> Pair:
        return cls(**row)


@dataclass
class PairStats:
    """What building pairs from groups did (``pairs/...`` metrics)."""

    groups: int = 0
    skipped_groups: int = 0
    correctness: int = 0
    length: int = 0

    def metrics(self) -> dict[str, float]:
        return {
            "pairs/groups": self.groups,
            "pairs/skipped_groups": self.skipped_groups,
            "pairs/correctness": self.correctness,
            "pairs/length": self.length,
        }


def group_pairs(group: list[Sample], sampling: SamplingConfig) -> list[Pair]:
    """The pairs of one problem's samples: up to ``pairs_per_problem`` correctness pairs (the
    i-th correct sample, in sample order, against the i-th incorrect one) and, with
    ``length_pairs``, the shortest correct sample against the longest correct one when it is at
    most ``length_ratio`` of its length. Empty completions are never paired."""
    usable = [s for s in group if s.token_ids]
    correct = [s for s in usable if s.score.correct]
    wrong = [s for s in usable if not s.score.correct]
    pairs = []
    for good, bad in list(zip(correct, wrong))[: sampling.pairs_per_problem]:
        pairs.append(Pair(good.prompt_ids, good.token_ids, bad.token_ids, "correctness", good.problem.index))
    if sampling.length_pairs and len(correct) >= 2:
        by_length = sorted(correct, key=lambda s: len(s.token_ids))  # stable: ties keep sample order
        short, long = by_length[0], by_length[-1]
        if len(short.token_ids) <= sampling.length_ratio * len(long.token_ids):
            pairs.append(
                Pair(short.prompt_ids, short.token_ids, long.token_ids, "length", short.problem.index)
            )
    return pairs


def build_pairs(groups: list[list[Sample]], sampling: SamplingConfig) -> tuple[list[Pair], PairStats]:
    """Every group's pairs, and the counts (a group with nothing to prefer is skipped and counted)."""
    pairs, stats = [], PairStats(groups=len(groups))
    for group in groups:
        found = group_pairs(group, sampling)
        stats.skipped_groups += not found
        stats.correctness += sum(p.kind == "correctness" for p in found)
        stats.length += sum(p.kind == "length" for p in found)
        pairs += found
    return pairs, stats


def attach_reference(pairs: list[Pair], score: Score) -> list[Pair]:
    """Fill ``ref_chosen_logp`` / ``ref_rejected_logp`` with summed teacher-forced log-probs from
    ``score`` (one call for every completion of every pair); returns ``pairs``."""
    if not pairs:
        return pairs
    prompts = [p.prompt_ids for p in pairs for _ in range(2)]
    completions = [ids for p in pairs for ids in (p.chosen_ids, p.rejected_ids)]
    per_token = score(prompts, completions)
    for i, pair in enumerate(pairs):
        pair.ref_chosen_logp = float(sum(per_token[2 * i]))
        pair.ref_rejected_logp = float(sum(per_token[2 * i + 1]))
    return pairs

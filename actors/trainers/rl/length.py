"""Length-aware reward terms: each a pure function of one group (the n samples of one problem).

Each function returns per-sample **additions** to the task reward (or, for DLER, the rewards
after truncation), in the group's order, as plain Python floats. Lengths are completion token
counts. Which term applies, and when, is the trainer's choice (the Short-RL term only while
:class:`AccuracyGate` is on).

- :func:`short_rl`: arXiv 2505.12284, length term on correct answers only, with a tolerance band.
- :func:`kimi_length`: Kimi 1.5's group length reward.
- :func:`dler_truncate`: DLER's truncation penalty (batch-wise normalisation is the ``batch``
  advantage estimator in :mod:`actors.trainers.rl.advantages`).
- :func:`dapo_overlong`: DAPO's soft overlong punishment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _check_group(lengths: Sequence[int], correct: Sequence[bool]) -> None:
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags in one group")
    if any(length < 0 for length in lengths):
        raise ValueError(f"lengths must be >= 0, got {list(lengths)}")


def short_rl(
    lengths: Sequence[int], correct: Sequence[bool], tolerance: int = 0, eps: float = 1e-6
) -> list[float]:
    """Short-RL's length term (arXiv 2505.12284) for one group.

    Over the group's **correct** answers, ``lo``/``hi`` are the min/max length; a correct answer
    gets ``0.5`` if ``len <= lo + tolerance``, else ``0.5 - (len - lo) / (hi - lo + eps)``;
    wrong answers get 0 (so a wrong answer is never pushed shorter or longer). ``eps`` only
    guards the division and is tiny next to any length range of 1 token or more: with lengths
    ``[10, 20, 30]`` the terms are ``[0.5, 0.5 - 10/(20+eps), 0.5 - 20/(20+eps)]``, which equal
    ``[0.5, 0, -0.5]`` within ``eps/20 = 5e-8``.

    Args:
        lengths: completion lengths of the group's samples, ``[n]``.
        correct: whether each sample is correct (strict), ``[n]``.
        tolerance: tokens above the shortest correct answer that still earn the full 0.5.
        eps: added to the length range in the denominator.

    Returns:
        The per-sample additions, ``[n]``; all 0 when no sample is correct.
    """
    _check_group(lengths, correct)
    if tolerance < 0 or eps <= 0:
        raise ValueError(f"short_rl needs tolerance >= 0 and eps > 0, got {tolerance}, {eps}")
    right = [length for length, ok in zip(lengths, correct) if ok]
    if not right:
        return [0.0] * len(lengths)
    lo, hi = min(right), max(right)
    terms = []
    for length, ok in zip(lengths, correct):
        if not ok:
            terms.append(0.0)
        elif length <= lo + tolerance:
            terms.append(0.5)
        else:
            terms.append(0.5 - (length - lo) / (hi - lo + eps))
    return terms


class AccuracyGate:
    """Short-RL's switch: the length term applies only while accuracy holds near its best.

    ``update(acc)`` is on iff ``acc >= best - acc_tolerance``, where ``best`` is the highest batch
    accuracy of the **previous** steps (the first step is always on); then ``best`` takes
    ``acc`` into account. Counting the current batch in ``best`` before comparing gives the same
    decision: it only changes ``best`` when ``acc`` is the new best, and then the gate is on
    either way. The state is JSON-able and must be checkpointed (a resume restores ``best``).

    Args:
        acc_tolerance: how far below the running best accuracy the term stays on (0.05).
    """

    def __init__(self, acc_tolerance: float = 0.05) -> None:
        if not 0 <= acc_tolerance <= 1:
            raise ValueError(f"acc_tolerance must be in [0, 1], got {acc_tolerance}")
        self.acc_tolerance = acc_tolerance
        self.best: float | None = None
        self.steps = 0

    def update(self, batch_accuracy: float) -> bool:
        """Record this step's batch accuracy (in [0, 1]); return whether the length term applies."""
        if not (math.isfinite(batch_accuracy) and 0 <= batch_accuracy <= 1):
            raise ValueError(f"batch accuracy must be in [0, 1], got {batch_accuracy}")
        on = self.best is None or batch_accuracy >= self.best - self.acc_tolerance
        self.best = batch_accuracy if self.best is None else max(self.best, batch_accuracy)
        self.steps += 1
        return on

    def state_dict(self) -> dict[str, Any]:
        """The JSON-able state: tolerance, best accuracy so far (None before the first step), steps."""
        return {"acc_tolerance": self.acc_tolerance, "best": self.best, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; refuses one saved with another tolerance."""
        if state["acc_tolerance"] != self.acc_tolerance:
            raise ValueError(
                f"accuracy gate saved with acc_tolerance={state['acc_tolerance']}, "
                f"this run has {self.acc_tolerance}"
            )
        self.best = None if state["best"] is None else float(state["best"])
        self.steps = int(state["steps"])


def kimi_length(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Kimi 1.5's length reward for one group.

    ``λ = 0.5 - (len - lo) / (hi - lo)`` with ``lo``/``hi`` the min/max length of the **whole**
    group (right and wrong samples); a correct sample gets ``λ``, a wrong one ``min(0, λ)`` (a
    short wrong answer is not rewarded for being short). All lengths equal: 0 for everyone.

    Args:
        lengths: completion lengths, ``[n]``.
        correct: whether each sample is correct, ``[n]``.
    """
    _check_group(lengths, correct)
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    lambdas = [0.5 - (length - lo) / (hi - lo) for length in lengths]
    return [lam if ok else min(0.0, lam) for lam, ok in zip(lambdas, correct)]


def dler_truncate(
    rewards: Sequence[float],
    lengths: Sequence[int],
    limit: int,
    truncated: Sequence[bool] | None = None,
) -> list[float]:
    """DLER's truncation penalty: a sample longer than ``limit`` tokens gets reward 0.

    Args:
        rewards: the group's rewards, ``[n]``.
        lengths: completion lengths, ``[n]``.
        limit: the truncation length (tokens).
        truncated: optional flags of samples the engine cut short (finish reason ``length``);
            they get 0 too, which matters when ``limit`` equals ``max_new_tokens`` (a cut-off
            sample is then exactly ``limit`` long).

    Returns:
        The rewards with every over-long (or cut-off) sample's reward replaced by 0.
    """
    if len(rewards) != len(lengths) or (truncated is not None and len(truncated) != len(lengths)):
        raise ValueError("rewards, lengths (and truncated) must have one entry per sample")
    if limit < 1:
        raise ValueError(f"truncation limit must be >= 1, got {limit}")
    cut = truncated if truncated is not None else [False] * len(lengths)
    return [0.0 if length > limit or c else float(r) for r, length, c in zip(rewards, lengths, cut)]


def dapo_overlong(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment of one sample (an addition to its reward).

    0 up to ``max_len - buffer`` tokens, then ``-(len - (max_len - buffer)) / buffer * factor``,
    falling linearly to ``-factor`` at ``max_len``; beyond ``max_len`` it stays at ``-factor``
    (DAPO's ``-1`` for ``factor = 1``), so a sample the engine let run longer is not punished
    without bound.

    Args:
        length: the completion length (tokens).
        max_len: the maximum response length ``L_max``.
        buffer: the punishment interval ``L_cache`` (tokens), ``0 < buffer <= max_len``.
        factor: the penalty at ``max_len``.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"dapo_overlong needs 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    if factor < 0:
        raise ValueError(f"dapo_overlong factor must be >= 0, got {factor}")
    penalty = -(length - (max_len - buffer)) / buffer * factor
    return max(min(penalty, 0.0), -factor)

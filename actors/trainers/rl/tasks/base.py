"""What every verifiable task shares: problems, scores, the task registry and the answer tag.

A problem is a pure function of ``(seed, index)``: each task draws from its own local
``random.Random(f"{task}:{seed}:{index}")`` (string seeds are hashed with SHA-512, so the stream
does not depend on ``PYTHONHASHSEED`` or on any global state), which is why a run has nothing to
checkpoint about its data and a resume replays nothing.

The answer tag, for every task: the answer is the text between the **last** ``<answer>`` and the
first ``</answer>`` after it (tags are matched case-insensitively, the content is stripped).

- Only the completion is scored, never the prompt: the caller passes the generated text alone,
  so an answer quoted from the prompt (or from the chat template) cannot count.
- The last tag wins, so writing several answers does not hedge: only the final one is judged.
- An unclosed last ``<answer>`` means there is no answer, even when an earlier tag was closed
  (the model's last word is unfinished; falling back to an earlier answer would reward hedging).
- Nested tags resolve to the innermost last one: ``<answer>1 <answer>5</answer></answer>`` → ``5``;
  a stray ``</answer>`` after the answer is ignored.
- An empty answer (``<answer> </answer>``) is not well-formed.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE = re.compile(r"</answer>", re.IGNORECASE)

#: how the tasks ask for the answer; shared so the prompts and the parser agree
ANSWER_FORMAT = "<answer></answer>"


@dataclass(frozen=True)
class Problem:
    """One procedurally generated problem.

    Attributes:
        task: the registered task name that generated it.
        index: its global index (with the seed, all that is needed to rebuild it).
        prompt: the user message (no chat template applied).
        answer: the canonical ground truth, as it would be written inside the answer tag.
        data: JSON-able extras the scorer needs (countdown's numbers and target, ...).
    """

    task: str
    index: int
    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """How one completion did on one problem.

    Attributes:
        reward: the scalar reward used for training (task-specific scale).
        correct: right by the strict parser (the last answer tag), the accuracy that is trained.
        lenient: right by the lenient parser (reported beside ``correct``, never rewarded), so a
            gain that is only the model learning the format shows.
        formatted: the completion holds a well-formed answer tag.
    """

    reward: float
    correct: bool
    lenient: bool
    formatted: bool


@runtime_checkable
class Task(Protocol):
    """A verifiable task: problems from ``(seed, index)`` and a scorer of completions."""

    name: str

    def problem(self, seed: int, index: int) -> Problem:
        """The problem at ``index`` of the stream ``seed``; the same arguments give the same problem."""
        ...

    def score(self, problem: Problem, completion: str) -> Score:
        """Score the completion text alone (never the prompt)."""
        ...


#: task name -> task class (a dataclass whose fields are its knobs)
TASKS: dict[str, type] = {}


def register_task(name: str):
    """Class decorator: register a task dataclass under ``name`` (its fields are its knobs)."""

    def decorate(cls: type) -> type:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        cls.name = name
        TASKS[name] = cls
        return cls

    return decorate


def build_task(name: str, **knobs: Any) -> Task:
    """Build a registered task from its name and difficulty knobs.

    Raises:
        ValueError: on an unknown task or knob (named, with the known ones), or a bad knob value.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown} for task {name!r}; known knobs: {known}")
    return cls(**knobs)


def problem_rng(task: str, seed: int, index: int) -> random.Random:
    """The local RNG of one problem: a pure function of ``(task, seed, index)``."""
    if index < 0:
        raise ValueError(f"problem index must be >= 0, got {index}")
    return random.Random(f"{task}:{seed}:{index}")


def last_answer(completion: str) -> str | None:
    """The content of the last answer tag (stripped), or None when there is no well-formed one.

    Args:
        completion: the generated text only.
    """
    opens = list(_OPEN.finditer(completion))
    if not opens:
        return None
    start = opens[-1].end()
    close = _CLOSE.search(completion, start)
    if close is None:
        return None
    content = completion[start : close.start()].strip()
    return content or None


def tiered_reward(correct: bool, formatted: bool) -> float:
    """The 1.0 / 0.1 / 0 reward of arithmetic and countdown: right, format only, neither."""
    if correct:
        return 1.0
    return 0.1 if formatted else 0.0


def tiered_score(correct: bool, lenient: bool, formatted: bool) -> Score:
    """A :class:`Score` with the :func:`tiered_reward` of arithmetic and countdown."""
    reward = tiered_reward(correct, formatted)
    return Score(reward=reward, correct=correct, lenient=lenient, formatted=formatted)

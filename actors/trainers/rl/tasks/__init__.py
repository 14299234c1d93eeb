"""Procedural verifiable tasks (no downloads): arithmetic, countdown, knights and knaves.

``build_task(name, **knobs)`` gives a :class:`Task`; ``task.problem(seed, index)`` is a pure
function of its arguments and ``task.score(problem, completion_text)`` scores the completion
alone. The answer-tag rules shared by all tasks are in :mod:`actors.trainers.rl.tasks.base`.
"""

from __future__ import annotations

# importing the task modules registers them
from actors.trainers.rl.tasks import arithmetic, countdown, knights, token_share  # noqa: F401
from actors.trainers.rl.tasks.base import TASKS, Problem, Score, Task, build_task, last_answer, register_task

__all__ = ["TASKS", "Problem", "Score", "Task", "build_task", "last_answer", "register_task"]

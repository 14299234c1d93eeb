"""The task registry, the shared answer-tag rules, determinism and ground truths of every task."""

from __future__ import annotations

import json
import random

import pytest

from actors.trainers.rl.tasks import TASKS, Problem, Task, build_task, last_answer

ALL_TASKS = [("arithmetic", {}), ("arithmetic", {"digits": 3, "terms": 4, "ops": "*-"}), ("countdown", {})]
ALL_TASKS += [("knights", {"people": people}) for people in (2, 3, 4, 5)]


def test_registry_knows_the_three_tasks():
    assert {"arithmetic", "countdown", "knights"} <= set(TASKS)
    for name in ("arithmetic", "countdown", "knights"):
        task = build_task(name)
        assert isinstance(task, Task) and task.name == name


def test_unknown_task_and_knob_are_named():
    with pytest.raises(ValueError, match="'sudoku'.*known tasks"):
        build_task("sudoku")
    with pytest.raises(ValueError, match="'digit'.*known knobs"):
        build_task("arithmetic", digit=3)
    with pytest.raises(ValueError, match="ops"):
        build_task("arithmetic", ops="+/")
    with pytest.raises(ValueError, match="people"):
        build_task("knights", people=1)


@pytest.mark.parametrize(("name", "knobs"), ALL_TASKS)
def test_problems_are_a_pure_function_of_seed_and_index(name, knobs):
    task = build_task(name, **knobs)
    first = [task.problem(seed=7, index=i) for i in range(30)]
    random.seed(12345)  # global RNG state must not matter
    again = [build_task(name, **knobs).problem(seed=7, index=i) for i in reversed(range(30))][::-1]
    assert first == again
    assert len({p.prompt for p in first}) >= 25, "different indices should give different problems"
    assert task.problem(seed=8, index=0) != first[0]
    assert all(p.index == i and p.task == name for i, p in enumerate(first))


@pytest.mark.parametrize(("name", "knobs"), ALL_TASKS)
def test_ground_truth_scores_full_reward(name, knobs):
    task = build_task(name, **knobs)
    full = 3.0 if name == "knights" else 1.0
    for i in range(100):
        problem = task.problem(seed=0, index=i)
        score = task.score(problem, f"Let me think.\n<answer>{problem.answer}</answer>")
        assert (score.reward, score.correct, score.lenient, score.formatted) == (full, True, True, True), (
            problem
        )
        json.dumps(problem.data)  # the extras are JSON-able
        assert "<answer></answer>" in problem.prompt


@pytest.mark.parametrize(("name", "knobs"), ALL_TASKS)
def test_answer_quoted_in_the_prompt_alone_does_not_count(name, knobs):
    """Only the completion is scored: echoing the prompt, or a bare untagged answer, is not right."""
    task = build_task(name, **knobs)
    problem = task.problem(seed=1, index=3)
    nothing = task.score(problem, "")
    assert not nothing.correct and not nothing.formatted
    for completion in (problem.prompt, problem.answer):
        score = task.score(problem, completion)
        assert not score.correct and score.reward <= nothing.reward


def test_last_answer_rules():
    assert last_answer("<answer>3</answer> then <answer> 5 </answer>") == "5"
    assert last_answer("<ANSWER>7</Answer>") == "7"
    assert last_answer("<answer>3</answer> <answer>5") is None, "an unclosed last tag is no answer"
    assert last_answer("<answer>1 <answer>5</answer></answer>") == "5"
    assert last_answer("<answer>   </answer>") is None
    assert last_answer("no tags here 5") is None
    assert last_answer("</answer>5<answer>") is None


def test_problem_is_frozen():
    problem = build_task("arithmetic").problem(0, 0)
    assert isinstance(problem, Problem)
    with pytest.raises(AttributeError):
        problem.answer = "0"  # type: ignore[misc]

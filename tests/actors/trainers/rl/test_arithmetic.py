"""Arithmetic: precedence, the strict and lenient parsers on crafted completions, rewards."""

from __future__ import annotations

import ast
import operator

import pytest

from actors.trainers.rl.tasks import Problem, build_task
from actors.trainers.rl.tasks.arithmetic import evaluate_chain, last_number, parse_strict_int

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _python_value(expression: str) -> int:
    """An independent oracle: Python's own parser gives the precedence (walked, not eval'd)."""

    def walk(node):
        if isinstance(node, ast.Constant):
            return node.value
        return _BINOPS[type(node.op)](walk(node.left), walk(node.right))

    return walk(ast.parse(expression, mode="eval").body)


def test_precedence_matches_python():
    assert evaluate_chain([12, 3, 4], ["+", "*"]) == 24
    assert evaluate_chain([2, 3, 4, 5], ["*", "-", "*"]) == -14
    assert evaluate_chain([10, 3, 2], ["-", "-"]) == 5
    task = build_task("arithmetic", digits=2, terms=5, ops="+-*")
    for i in range(300):
        problem = task.problem(seed=3, index=i)
        assert int(problem.answer) == _python_value(problem.data["expression"]), problem.data


def test_knobs_shape_the_problem():
    problem = build_task("arithmetic", digits=3, terms=4, ops="*").problem(seed=0, index=0)
    assert len(problem.data["terms"]) == 4 and set(problem.data["ops"]) == {"*"}
    assert all(100 <= term <= 999 for term in problem.data["terms"])
    assert problem.data["expression"] in problem.prompt


def _problem(answer: int) -> Problem:
    return Problem(task="arithmetic", index=0, prompt="Compute ...", answer=str(answer), data={})


@pytest.mark.parametrize(
    ("completion", "reward", "correct", "lenient", "formatted"),
    [
        ("<answer>42</answer>", 1.0, True, True, True),
        ("<answer> 42 </answer>", 1.0, True, True, True),
        ("I think 41. <answer>42</answer>", 1.0, True, True, True),
        ("<answer>41</answer> no wait <answer>42</answer>", 1.0, True, True, True),
        ("<answer>42</answer> no wait <answer>41</answer>", 0.1, False, False, True),  # last one wins
        ("<answer>42</answer> <answer>41", 0.0, False, False, False),  # unclosed last tag
        ("<answer>+42</answer>", 0.1, False, True, True),
        ("<answer>042</answer>", 0.1, False, True, True),
        ("<answer>42.0</answer>", 0.1, False, True, True),
        ("<answer>forty-two</answer>", 0.1, False, False, True),
        ("<answer>42 apples</answer>", 0.1, False, True, True),
        ("The answer is 42.", 0.0, False, True, False),
        ("The answer is 42", 0.0, False, True, False),
        ("", 0.0, False, False, False),
    ],
)
def test_scoring_crafted_completions(completion, reward, correct, lenient, formatted):
    score = build_task("arithmetic").score(_problem(42), completion)
    assert (score.reward, score.correct, score.lenient, score.formatted) == (
        reward,
        correct,
        lenient,
        formatted,
    )


def test_negative_answers_and_thousand_separators():
    task = build_task("arithmetic")
    assert task.score(_problem(-17), "<answer>-17</answer>").correct
    assert not task.score(_problem(17), "<answer>-17</answer>").correct
    big = task.score(_problem(1234), "<answer>1,234</answer>")
    assert (big.correct, big.lenient, big.reward) == (False, True, 0.1)
    assert task.score(_problem(-5), "so 3 - 8 = -5").lenient


def test_parsers():
    assert parse_strict_int("0") == 0 and parse_strict_int("-0") == 0
    for bad in ("+5", "05", "5.0", "1,000", "1 000", "", None, "5\n6"):
        assert parse_strict_int(bad) is None, bad
    assert last_number("10-3") == 3, "a minus after a digit is subtraction"
    assert last_number("x = (-3)") == -3
    assert last_number("1,234,567 and then") == 1234567
    assert last_number("pi is 3.14") == pytest.approx(3.14)
    assert last_number("no digits") is None


def test_demonstration_styles_end_in_the_strict_answer():
    for style in ("equation", "verbose"):
        task = build_task("arithmetic", digits=1, terms=2, ops="-", demonstration_style=style)
        problem = task.problem(seed=-1, index=0)
        shown = task.demonstration(problem)
        assert shown.startswith("We need") == (style == "verbose")
        assert task.score(problem, shown).correct, shown
    with pytest.raises(ValueError, match="demonstration_style"):
        build_task("arithmetic", demonstration_style="chatty")

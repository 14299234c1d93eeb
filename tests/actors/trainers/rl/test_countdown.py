"""Countdown: solvable targets, and an AST checker that rejects everything outside the game."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from actors.trainers.rl.tasks import Problem, build_task
from actors.trainers.rl.tasks.countdown import check_expression


def test_targets_are_reached_by_the_stored_solution():
    task = build_task("countdown")
    for i in range(300):
        problem = task.problem(seed=11, index=i)
        numbers, target = problem.data["numbers"], problem.data["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= n <= 25 for n in numbers)
        assert isinstance(target, int) and 1 <= target <= 500
        assert check_expression(problem.answer, numbers, target), problem
        digits = [
            int(tok) for tok in problem.answer.replace("(", " ").replace(")", " ").split() if tok.isdigit()
        ]
        assert Counter(digits) == Counter(numbers)
        assert str(target) in problem.prompt and all(str(n) in problem.prompt for n in numbers)


def _problem(numbers, target) -> Problem:
    return Problem(
        task="countdown", index=0, prompt="...", answer="", data={"numbers": numbers, "target": target}
    )


NUMBERS, TARGET = [3, 5, 7, 2], 54  # (3 + 5) * 7 - 2


@pytest.mark.parametrize(
    "expression",
    ["(3 + 5) * 7 - 2", "7 * (5 + 3) - 2", " ( 3+5 )*7-2 ", "(3 + 5) × 7 - 2", "((3 + 5) * 7) - 2"],
)
def test_right_answers(expression):
    assert check_expression(expression, NUMBERS, TARGET)


@pytest.mark.parametrize(
    "expression",
    [
        "(3 + 5) * 7 - 2 + 0",  # an extra number
        "(3 + 5) * 7",  # a number missing
        "(3 + 3) * 9",  # reused number, numbers not in the list
        "(5 + 5) * 5 + 4",
        "54",
        "(3 + 5) * 7 - -2 - 4",
        "-(2 - (3 + 5) * 7)",  # unary minus is rejected even when the value is right
        "+((3 + 5) * 7 - 2)",
        "(3 + 5) ** 2 - 7 - 3",
        "(3 + 5) // 1 * 7 - 2",
        "3.0 * 5 * 7 - 2",
        "0x3 + 5",
        "__import__('os').system('echo pwned')",
        "(lambda: 54)()",
        "().__class__",
        "[3, 5, 7, 2]",
        "54 if 3 else 5 * 7 * 2",
        "3 + 5; 7 - 2",
        "9" * 5000,
        "2 ** 2 ** 2 ** 2 ** 2 ** 2 ** 2",
        "(" * 300 + "3" + ")" * 300,
        "(" * 99 + "3 + 5 + 7 + 2" + ")" * 99,
        "",
    ],
)
def test_wrong_or_forbidden_answers(expression):
    start = time.perf_counter()
    assert not check_expression(expression, NUMBERS, TARGET)
    assert time.perf_counter() - start < 0.1, "nothing expensive may be evaluated"


def test_other_operators_are_rejected_even_with_the_right_numbers():
    """Not only the multiset check: ``**``, ``//``, ``%`` and unary signs are outside the grammar."""
    assert not check_expression("2 ** 3", [2, 3], 8)
    assert not check_expression("2 ** 10 ** 10", [2, 10, 10], 1)
    assert not check_expression("8 // 2", [8, 2], 4)
    assert not check_expression("8 % 3", [8, 3], 2)
    assert not check_expression("-3 + 5", [3, 5], 2)
    assert not check_expression("+3 + 5", [3, 5], 8)
    assert not check_expression("0x3 + 5", [3, 5], 8), "only plain decimal literals"
    assert not check_expression("1_0 - 2", [10, 2], 8)
    assert not check_expression("3.0 + 5", [3, 5], 8)
    assert check_expression("3 + 5", [3, 5], 8)


def test_division_is_exact_and_by_zero_is_wrong():
    assert check_expression("6 / 4 * 2", [6, 4, 2], 3), "exact fractions: 6/4*2 = 3"
    assert not check_expression("6 / 4", [6, 4], 1), "no integer division"
    assert not check_expression("3 / (2 - 2)", [3, 2, 2], 1)
    assert check_expression("(2 - 2) / 3 + 1", [2, 2, 3, 1], 1), "0 / 3 is fine"
    assert not check_expression("1 / (3 - 3) * 0", [1, 3, 3, 0], 0)


def test_scoring_and_last_answer_wins():
    task = build_task("countdown")
    problem = _problem(NUMBERS, TARGET)
    cases = {
        "<answer>(3 + 5) * 7 - 2</answer>": (1.0, True, True, True),
        "<answer>(3 + 5) * 7 - 2</answer> or <answer>3 * 5 * 7 * 2</answer>": (0.1, False, False, True),
        "<answer>3 * 5</answer> ... <answer>(3 + 5) * 7 - 2</answer>": (1.0, True, True, True),
        "<answer>__import__('os')</answer>": (0.1, False, False, True),
        "<answer>(3 + 5) * 7 - 2": (0.0, False, True, False),  # unclosed: lenient still reads it
        "so (3 + 5) * 7 - 2 = 54": (0.0, False, True, False),
        "so (3 + 5) * 7 - 3 = 53": (0.0, False, False, False),
        "54": (0.0, False, False, False),
    }
    for completion, expected in cases.items():
        score = task.score(problem, completion)
        assert (score.reward, score.correct, score.lenient, score.formatted) == expected, completion

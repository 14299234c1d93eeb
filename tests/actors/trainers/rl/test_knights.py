"""Knights and knaves: unique solutions checked from the prompt's English alone, and the scorer."""

from __future__ import annotations

import itertools
import re

import pytest

from actors.trainers.rl.tasks import Problem, build_task

# An oracle independent of the generator: read each sentence of the prompt, not its data.
_SENTENCES = [
    (r"(\w+) is a (knight|knave)\.", lambda w, x, r: w[x] == (r == "knight")),
    (r"(\w+) and (\w+) are both (knight|knave)s\.", lambda w, x, y, r: w[x] == w[y] == (r == "knight")),
    (r"At least one of (\w+) and (\w+) is a knight\.", lambda w, x, y: w[x] or w[y]),
    (r"(\w+) and (\w+) are of the same kind\.", lambda w, x, y: w[x] == w[y]),
    (r"(\w+) and (\w+) are of different kinds\.", lambda w, x, y: w[x] != w[y]),
    (r"None of us is a (knight|knave)\.", lambda w, r: sum(v == (r == "knight") for v in w.values()) == 0),
    (
        r"Exactly one of us is a (knight|knave)\.",
        lambda w, r: sum(v == (r == "knight") for v in w.values()) == 1,
    ),
    (
        r"Exactly (two|three|four|five) of us are (knight|knave)s\.",
        lambda w, k, r: (
            sum(v == (r == "knight") for v in w.values()) == ["two", "three", "four", "five"].index(k) + 2
        ),
    ),
    (
        r"If (\w+) is a (knight|knave), then (\w+) is a (knight|knave)\.",
        lambda w, x, rx, y, ry: w[x] != (rx == "knight") or w[y] == (ry == "knight"),
    ),
]


def _solutions_from_prompt(prompt: str) -> list[dict[str, bool]]:
    said = re.findall(r'^(\w+) says: "(.*)"$', prompt, re.MULTILINE)
    names = [name for name, _ in said]
    claims = []
    for speaker, sentence in said:
        matches = [(fn, m.groups()) for pattern, fn in _SENTENCES if (m := re.fullmatch(pattern, sentence))]
        assert len(matches) == 1, f"cannot read {sentence!r}"
        claims.append((speaker, *matches[0]))
    worlds = [dict(zip(names, values)) for values in itertools.product((True, False), repeat=len(names))]
    return [w for w in worlds if all(fn(w, *args) == w[speaker] for speaker, fn, args in claims)]


@pytest.mark.parametrize("people", [2, 3, 4, 5])
def test_every_puzzle_has_exactly_one_solution_read_from_its_text(people):
    task = build_task("knights", people=people)
    for i in range(60):
        problem = task.problem(seed=5, index=i)
        solutions = _solutions_from_prompt(problem.prompt)
        assert len(solutions) == 1, problem.prompt
        expected = {name: role == "knight" for name, role in problem.data["solution"].items()}
        assert solutions[0] == expected
        assert len(problem.data["names"]) == people


def _problem() -> Problem:
    names = ["Alice", "Bob", "Carol"]
    data = {
        "names": names,
        "statements": [],
        "solution": {"Alice": "knight", "Bob": "knave", "Carol": "knave"},
    }
    return Problem(task="knights", index=0, prompt="...", answer="", data=data)


@pytest.mark.parametrize(
    ("completion", "reward", "correct", "lenient", "formatted"),
    [
        ("<answer>Alice is a knight, Bob is a knave, Carol is a knave</answer>", 3.0, True, True, True),
        ("<answer>carol is a KNAVE; alice IS A knight and bob is a knave.</answer>", 3.0, True, True, True),
        ("<answer>Alice: knight\nBob: knave\nCarol - knave</answer>", 3.0, True, True, True),
        ("<answer>Alice is a knight, Bob is a knave, Carol is a knight</answer>", -0.5, False, False, True),
        ("<answer>Alice is a knight, Bob is a knave</answer>", -1.0, False, False, True),  # Carol missing
        (  # Alice given both roles: unparseable
            "<answer>Alice is a knight, Alice is a knave, Bob is a knave, Carol is a knave</answer>",
            -1.0, False, False, True,
        ),
        ("<answer>Alice is not a knight, Bob is a knave, Carol is a knave</answer>",
         -1.0, False, False, True),
        ("<answer>Alice and Carol are knights</answer>", -1.0, False, False, True),
        ("<answer>Alice is a knave, Bob is a knight, Carol is a knight</answer>"
         "<answer>Alice is a knight, Bob is a knave, Carol is a knave</answer>", 3.0, True, True, True),
        ("<answer>Alice is a knight, Bob is a knave, Carol is a knave</answer>"
         "<answer>Alice is a knave, Bob is a knight, Carol is a knight</answer>", -0.5, False, False, True),
        ("Alice is a knight, Bob is a knave, Carol is a knave.", -1.0, False, True, False),
        ("<answer>Alice is a knight, Bob is a knave, Carol is a knave", -1.0, False, True, False),
        ("", -1.0, False, False, False),
    ],
)  # fmt: skip
def test_scoring_crafted_completions(completion, reward, correct, lenient, formatted):
    score = build_task("knights").score(_problem(), completion)
    assert (score.reward, score.correct, score.lenient, score.formatted) == (
        reward,
        correct,
        lenient,
        formatted,
    )

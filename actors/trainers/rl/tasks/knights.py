"""Knights and knaves: who tells the truth? Puzzles with exactly one solution, by brute force.

Each of ``people`` inhabitants makes one templated statement about the others (or about all of
"us"). Every one of the ``2^n`` knight/knave assignments is checked (a knight's statement is
true, a knave's false), and statements are redrawn from the same local RNG until exactly one
assignment is consistent.

Answer: ``<answer>Alice is a knight, Bob is a knave</answer>``, order-free and case-insensitive;
``Alice: knight`` and ``Alice - knave`` are read too. The answer parses only if **every** person
of the puzzle is named with exactly one role (a person given both roles, or left out, makes it
unparseable); other names are ignored. ``Alice is not a knight`` names no role for Alice.

Reward (Logic-RL's scale and combination): ``reward = format + answer`` with
``format = +1`` if the completion has a well-formed answer tag else ``-1``, and ``answer`` (only
when the format is right, else 0) ``+2`` all right, ``-1.5`` parsed but wrong, ``-2`` unparseable.
So the reward is one of ``3`` (right), ``-0.5`` (wrong), ``-1`` (unparseable, or no tag).
Lenient (reported only): for each person, the last ``NAME is a knight/knave`` anywhere in the
completion, all right.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from actors.trainers.rl.tasks.base import Problem, Score, last_answer, problem_rng, register_task

#: distinct names, none a substring of another, so a name's word boundary match is unambiguous
NAMES = (
    "Alice", "Bob", "Carol", "Dave", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Liam",
    "Mia", "Noah", "Olivia", "Paul", "Quinn", "Ruby", "Sam", "Tina", "Victor", "Wendy", "Xavier", "Yara",
)  # fmt: skip
FORMAT_REWARD, RIGHT_REWARD, WRONG_REWARD, UNPARSEABLE_REWARD = 1.0, 2.0, -1.5, -2.0
_COUNT_WORDS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight")
_MAX_ATTEMPTS = 10_000


def _role(knight: bool) -> str:
    return "knight" if knight else "knave"


def statement_truth(statement: list, assignment: tuple[bool, ...]) -> bool:
    """Whether a statement holds under an assignment (``assignment[i]`` is True for a knight).

    Statements are JSON-able lists: ``["is", x, knight]``, ``["both", x, y, knight]``,
    ``["either", x, y]`` (at least one knight), ``["same", x, y]``, ``["different", x, y]``,
    ``["count", k, knight]`` (exactly k of everyone), ``["implies", x, kx, y, ky]``.
    """
    kind, *args = statement
    if kind == "is":
        return assignment[args[0]] == args[1]
    if kind == "both":
        return assignment[args[0]] == args[2] and assignment[args[1]] == args[2]
    if kind == "either":
        return assignment[args[0]] or assignment[args[1]]
    if kind == "same":
        return assignment[args[0]] == assignment[args[1]]
    if kind == "different":
        return assignment[args[0]] != assignment[args[1]]
    if kind == "count":
        return sum(a == args[1] for a in assignment) == args[0]
    if kind == "implies":
        return assignment[args[0]] != args[1] or assignment[args[2]] == args[3]
    raise ValueError(f"unknown statement kind {kind!r}")


def consistent_assignments(statements: list[list], people: int) -> list[tuple[bool, ...]]:
    """Every assignment in which each speaker's statement is true exactly when they are a knight."""
    return [
        assignment
        for assignment in itertools.product((True, False), repeat=people)
        if all(statement_truth(s, assignment) == assignment[i] for i, s in enumerate(statements))
    ]


def _random_statement(rng, speaker: int, people: int) -> list:
    """One statement by ``speaker``; the people it names are others, "us" is everyone."""
    others = [p for p in range(people) if p != speaker]
    kinds = ["is", "count", "is"] + (
        ["both", "either", "same", "different", "implies"] if len(others) >= 2 else []
    )
    kind = rng.choice(kinds)
    if kind == "is":
        return ["is", rng.choice(others), rng.random() < 0.5]
    if kind == "count":
        return ["count", rng.randint(0, people), rng.random() < 0.5]
    x, y = rng.sample(others, 2)
    if kind == "both":
        return ["both", x, y, rng.random() < 0.5]
    if kind == "implies":
        return ["implies", x, rng.random() < 0.5, y, rng.random() < 0.5]
    return [kind, x, y]


def render_statement(statement: list, names: list[str]) -> str:
    """The English sentence of a statement."""
    kind, *args = statement
    if kind == "is":
        return f"{names[args[0]]} is a {_role(args[1])}."
    if kind == "both":
        return f"{names[args[0]]} and {names[args[1]]} are both {_role(args[2])}s."
    if kind == "either":
        return f"At least one of {names[args[0]]} and {names[args[1]]} is a knight."
    if kind == "same":
        return f"{names[args[0]]} and {names[args[1]]} are of the same kind."
    if kind == "different":
        return f"{names[args[0]]} and {names[args[1]]} are of different kinds."
    if kind == "count":
        count, role = args[0], _role(args[1])
        if count <= 1:
            return f"{'None' if count == 0 else 'Exactly one'} of us is a {role}."
        return f"Exactly {_COUNT_WORDS[count]} of us are {role}s."
    return f"If {names[args[0]]} is a {_role(args[1])}, then {names[args[2]]} is a {_role(args[3])}."


def _role_mentions(text: str, name: str) -> list[bool]:
    """Every role given to ``name`` in ``text``, in order (True for knight)."""
    pattern = rf"\b{re.escape(name)}\b\s*(?:is\s+(?:an?\s+)?|[:=\-–—]\s*)(knight|knave)s?\b"
    return [m.group(1).lower() == "knight" for m in re.finditer(pattern, text, re.IGNORECASE)]


def parse_assignment(content: str, names: list[str]) -> dict[str, bool] | None:
    """Strict: each name given exactly one role (all mentions agree), else None."""
    parsed = {}
    for name in names:
        roles = set(_role_mentions(content, name))
        if len(roles) != 1:
            return None
        parsed[name] = roles.pop()
    return parsed


def parse_lenient(completion: str, names: list[str]) -> dict[str, bool] | None:
    """Lenient: each name's last role anywhere in the completion, else None."""
    parsed = {}
    for name in names:
        roles = _role_mentions(completion, name)
        if not roles:
            return None
        parsed[name] = roles[-1]
    return parsed


@register_task("knights")
@dataclass(frozen=True)
class KnightsTask:
    """Knights-and-knaves puzzles with a unique solution.

    Attributes:
        people: inhabitants per puzzle, 2 to 8 (the check enumerates ``2^people`` assignments).
    """

    people: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.people, int) or not 2 <= self.people <= 8:
            raise ValueError(f"knights knob people must be an integer in [2, 8], got {self.people!r}")

    def problem(self, seed: int, index: int) -> Problem:
        rng = problem_rng(self.name, seed, index)
        names = rng.sample(NAMES, self.people)
        for _ in range(_MAX_ATTEMPTS):
            statements = [_random_statement(rng, i, self.people) for i in range(self.people)]
            solutions = consistent_assignments(statements, self.people)
            if len(solutions) == 1:
                break
        else:  # pragma: no cover - unique puzzles are common at every size
            raise RuntimeError(f"no unique knights puzzle for seed {seed}, index {index}")
        solution = solutions[0]
        listing = ", ".join(names[:-1]) + f" and {names[-1]}"
        said = "\n".join(f'{name} says: "{render_statement(s, names)}"' for name, s in zip(names, statements))
        prompt = (
            "On an island, knights always tell the truth and knaves always lie. "
            f"You meet {self.people} inhabitants: {listing}.\n{said}\n"
            "Who is a knight and who is a knave? Write the answer inside <answer></answer>, naming everyone, "
            "like <answer>NAME is a knight, NAME is a knave</answer>."
        )
        answer = ", ".join(f"{name} is a {_role(k)}" for name, k in zip(names, solution))
        data = {
            "names": names,
            "statements": statements,
            "solution": {n: _role(k) for n, k in zip(names, solution)},
        }
        return Problem(task=self.name, index=index, prompt=prompt, answer=answer, data=data)

    def score(self, problem: Problem, completion: str) -> Score:
        names = problem.data["names"]
        truth = {name: role == "knight" for name, role in problem.data["solution"].items()}
        content = last_answer(completion)
        parsed = parse_assignment(content, names) if content is not None else None
        formatted = content is not None
        if not formatted:
            reward = -FORMAT_REWARD
        elif parsed is None:
            reward = FORMAT_REWARD + UNPARSEABLE_REWARD
        else:
            reward = FORMAT_REWARD + (RIGHT_REWARD if parsed == truth else WRONG_REWARD)
        lenient = parse_lenient(completion, names) == truth
        return Score(reward=reward, correct=parsed == truth, lenient=lenient, formatted=formatted)

"""Countdown: combine the given numbers, each exactly once, with ``+ - * /`` to hit the target.

The target is built from a random expression tree over the problem's own numbers, so every
problem is solvable; the tree keeps every intermediate value a positive integer (``-`` only when
the result is positive, ``/`` only when exact), and its expression is stored as the canonical
answer. Other correct expressions score the same.

An answer is checked by walking ``ast.parse(content, mode="eval")``, never by evaluating it:

- characters are first limited to digits, spaces, ``+ - * / ( )`` (``×``/``÷`` read as ``*``/``/``),
  which already rejects names, calls, attributes (``__import__('os')``), floats, hex, ``_``;
- the tree may hold only ``BinOp`` with ``Add``/``Sub``/``Mult``/``Div`` and int ``Constant``s:
  ``**``, ``//``, ``%`` and **unary minus or plus are rejected** (a negated number is not a number
  from the list, and no solution needs one: the generator never uses it);
- the numbers must equal the problem's as a multiset (each once, none extra, none missing), and
  this is checked **before** any arithmetic, so nothing bigger than the puzzle is ever computed;
- arithmetic is exact (``fractions.Fraction``; intermediate fractions are allowed, as in the
  game's usual RL form); division by zero makes the answer wrong.

Rewards as arithmetic: 1.0 right, 0.1 a well-formed tag that is wrong, 0 no tag. Lenient
(reported only): the tag's answer, or else the last run of expression characters in the
completion that holds an operator (``... so (3 + 5) * 7 - 2 = 54`` → ``(3 + 5) * 7 - 2``), is right.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import actors.trainers.rl.tasks.base as base

#: longest answer the checker parses; a real solution over 4 numbers is far shorter
MAX_EXPRESSION_CHARS = 200
_EXPRESSION_CHARS = re.compile(r"[0-9\s+\-*/()]+")
# one line's maximal run of expression characters (linear: no nested quantifiers to backtrack)
_EXPRESSION_RUN = re.compile(r"[0-9 \t+\-*/()×÷]+")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


class _Rejected(Exception):
    """The answer uses something outside the countdown grammar."""


def _numbers_in(node: ast.AST) -> list[int]:
    """The int literals of an allowed expression tree; raises _Rejected on anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        return _numbers_in(node.left) + _numbers_in(node.right)
    raise _Rejected(type(node).__name__)


def _value(node: ast.AST) -> Fraction | None:
    """Exact value of an already-validated tree; None on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    left, right = _value(node.left), _value(node.right)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Div):
        return None if right == 0 else left / right
    return _OPS[type(node.op)](left, right)


def check_expression(expression: str, numbers: list[int], target: int) -> bool:
    """Whether ``expression`` uses exactly ``numbers`` (as a multiset) and equals ``target``.

    Never evaluates Python: only the whitelisted AST nodes are walked, with exact fractions.
    """
    text = expression.replace("×", "*").replace("÷", "/").strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS or not _EXPRESSION_CHARS.fullmatch(text):
        return False
    try:
        tree = ast.parse(text, mode="eval").body
        used = _numbers_in(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _Rejected):
        return False
    if Counter(used) != Counter(numbers):
        return False
    return _value(tree) == target


def _looks_like_expression(run: str) -> bool:
    """A run of expression characters with at least two numbers and an operator."""
    return len(re.findall(r"\d+", run)) >= 2 and re.search(r"[+\-*/×÷]", run) is not None


def _combine(rng, left: tuple[int, str], right: tuple[int, str]) -> tuple[int, str] | None:
    """One random operation of two subtrees keeping a positive integer value, or None."""
    (a, ta), (b, tb) = left, right
    op = rng.choice("+-*/")
    if op == "+":
        return a + b, f"{ta} + {tb}"
    if op == "*":
        return a * b, f"{ta} * {tb}"
    if op == "-":
        if a == b:
            return None
        (a, ta), (b, tb) = max(left, right), min(left, right)
        return a - b, f"{ta} - {tb}"
    if b != 0 and a % b == 0 and b != 1:
        return a // b, f"{ta} / {tb}"
    return None


def _random_tree(rng, numbers: list[int]) -> tuple[int, str] | None:
    """Fold the numbers into one random expression tree: (value, expression text)."""
    nodes = [(n, str(n)) for n in numbers]
    while len(nodes) > 1:
        i, j = rng.sample(range(len(nodes)), 2)
        combined = _combine(rng, nodes[i], nodes[j])
        if combined is None:
            return None
        value, text = combined
        nodes = [node for k, node in enumerate(nodes) if k not in (i, j)]
        # parenthesise inner nodes so the text means the tree whatever the precedence
        nodes.append((value, f"({text})"))
    value, text = nodes[0]
    return value, text[1:-1] if text.startswith("(") else text


@base.register_task("countdown")
@dataclass(frozen=True)
class CountdownTask:
    """Countdown puzzles over 3-4 numbers with a target that the stored tree reaches.

    Attributes:
        min_count: fewest numbers in a puzzle.
        max_count: most numbers in a puzzle (the count is drawn uniformly in between).
        max_number: numbers are drawn from ``[1, max_number]``.
        max_target: targets above this are redrawn (keeps products of big numbers out).
    """

    min_count: int = 3
    max_count: int = 4
    max_number: int = 25
    max_target: int = 500

    def __post_init__(self) -> None:
        if not 2 <= self.min_count <= self.max_count <= 6:
            raise ValueError(
                "countdown knobs need 2 <= min_count <= max_count <= 6, "
                f"got min_count={self.min_count}, max_count={self.max_count}"
            )
        if self.max_number < 2:
            raise ValueError(f"countdown knob max_number must be >= 2, got {self.max_number}")
        if self.max_target < 1:
            raise ValueError(f"countdown knob max_target must be >= 1, got {self.max_target}")

    def problem(self, seed: int, index: int) -> base.Problem:
        rng = base.problem_rng(self.name, seed, index)
        for _ in range(10_000):
            numbers = [
                rng.randint(1, self.max_number) for _ in range(rng.randint(self.min_count, self.max_count))
            ]
            tree = _random_tree(rng, numbers)
            if tree is not None and 1 <= tree[0] <= self.max_target:
                break
        else:  # pragma: no cover - the knobs are validated so that this cannot happen
            raise RuntimeError(f"no countdown puzzle found for seed {seed}, index {index}")
        target, solution = tree
        listed = ", ".join(map(str, numbers))
        prompt = (
            f"Using the numbers {listed}, each exactly once, and the operations + - * /, "
            f"write an expression that equals {target}. Write only the expression inside <answer></answer>."
        )
        data = {"numbers": numbers, "target": target}
        return base.Problem(task=self.name, index=index, prompt=prompt, answer=solution, data=data)

    def score(self, problem: base.Problem, completion: str) -> base.Score:
        numbers, target = problem.data["numbers"], problem.data["target"]
        answer = base.last_answer(completion)
        correct = answer is not None and check_expression(answer, numbers, target)
        formatted = answer is not None
        lenient = correct
        if not lenient and answer is None:
            runs = [run for run in _EXPRESSION_RUN.findall(completion) if _looks_like_expression(run)]
            lenient = bool(runs) and check_expression(runs[-1], numbers, target)
        return base.tiered_score(correct, lenient, formatted)

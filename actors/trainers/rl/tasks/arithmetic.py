"""Exact integer arithmetic: chains of d-digit terms joined by ``+ - *``.

The expression is written without parentheses and means what ordinary precedence says
(``*`` before ``+``/``-``, left to right otherwise): ``12 + 3 * 4`` is 24. The truth is computed
by this module's own precedence evaluator, never ``eval``.

Scoring (the completion only):

- **strict** (``correct``): the last answer tag holds exactly a canonical decimal integer
  (``-?(0|[1-9][0-9]*)`` after stripping) equal to the truth → reward 1.0. Not canonical, so
  wrong: ``+5``, ``05``, ``5.0``, ``1,000``, ``1 000``, words.
- **format only**: a well-formed answer tag that is not strictly right → 0.1; no tag → 0.
- **lenient** (reported, not rewarded): the last number anywhere in the completion, read
  forgivingly (thousand separators ``1,234``, decimals ``5.0``), equals the truth. A ``-`` right
  after a digit, letter or ``)`` is read as subtraction, not a sign (``10-3`` ends in ``3``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import actors.trainers.rl.tasks.base as base

_STRICT_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_LENIENT_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\w)")
_ALLOWED_OPS = "+-*"
_STYLES = {
    "equation": "{expression} = {answer}\n<answer>{answer}</answer>",
    "verbose": (
        "We need to compute {expression}. Let me work it out carefully, one step at a time. "
        "{expression} = {answer}.\n<answer>{answer}</answer>"
    ),
}


def evaluate_chain(terms: list[int], ops: list[str]) -> int:
    """Evaluate ``terms[0] ops[0] terms[1] ...`` with ``*`` binding tighter than ``+``/``-``.

    Args:
        terms: the integer terms, ``len(ops) + 1`` of them.
        ops: the operators between them, each one of ``+ - *``.
    """
    if len(terms) != len(ops) + 1:
        raise ValueError(f"{len(terms)} terms need {len(terms) - 1} operators, got {len(ops)}")
    # fold each run of products into one signed summand, then add the summands
    total, product, sign = 0, terms[0], 1
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            product *= term
            continue
        if op not in "+-":
            raise ValueError(f"unknown operator {op!r}")
        total += sign * product
        product, sign = term, (1 if op == "+" else -1)
    return total + sign * product


def parse_strict_int(text: str | None) -> int | None:
    """The integer a strict answer holds, or None if it is not exactly a canonical integer."""
    if text is None or not _STRICT_INT.fullmatch(text.strip()):
        return None
    return int(text.strip())


def last_number(text: str) -> Fraction | None:
    """The last number anywhere in ``text``, read leniently (``1,234``, ``5.0``), or None."""
    matches = _LENIENT_NUMBER.findall(text)
    return Fraction(matches[-1].replace(",", "")) if matches else None


@base.register_task("arithmetic")
@dataclass(frozen=True)
class ArithmeticTask:
    """Integer expressions of ``terms`` terms with ``digits`` digits each.

    Attributes:
        digits: digits per term (terms are drawn uniformly from ``[10^(d-1), 10^d - 1]``).
        terms: how many terms (at least 2).
        ops: the operators to draw from, a non-empty subset of ``"+-*"``.
        demonstration_style: how few-shot examples answer: ``equation`` (``7 - 9 = -2`` then the
            tag) or ``verbose`` (a sentence of filler first: a base policy that says more than it
            needs, for the length-aware demos).
    """

    digits: int = 2
    terms: int = 2
    ops: str = "+-*"
    demonstration_style: str = "equation"

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or self.digits < 1:
            raise ValueError(f"arithmetic knob digits must be an integer >= 1, got {self.digits!r}")
        if not isinstance(self.terms, int) or self.terms < 2:
            raise ValueError(f"arithmetic knob terms must be an integer >= 2, got {self.terms!r}")
        if not self.ops or set(self.ops) - set(_ALLOWED_OPS):
            raise ValueError(
                f"arithmetic knob ops must be a non-empty subset of {_ALLOWED_OPS!r}, got {self.ops!r}"
            )
        if self.demonstration_style not in _STYLES:
            raise ValueError(
                f"arithmetic knob demonstration_style must be one of {sorted(_STYLES)}, "
                f"got {self.demonstration_style!r}"
            )

    def problem(self, seed: int, index: int) -> base.Problem:
        rng = base.problem_rng(self.name, seed, index)
        low, high = 10 ** (self.digits - 1), 10**self.digits - 1
        choices = sorted(set(self.ops))
        terms = [rng.randint(low, high) for _ in range(self.terms)]
        ops = [rng.choice(choices) for _ in range(self.terms - 1)]
        expression = " ".join([str(terms[0])] + [f"{op} {term}" for op, term in zip(ops, terms[1:])])
        truth = evaluate_chain(terms, ops)
        prompt = f"Compute {expression}. Write the final answer as an integer inside <answer></answer>."
        data = {"expression": expression, "terms": terms, "ops": ops}
        return base.Problem(task=self.name, index=index, prompt=prompt, answer=str(truth), data=data)

    def demonstration(self, problem: base.Problem) -> str:
        """A worked answer, for few-shot examples: the expression with its value, then the tag
        (``verbose``: after a sentence of filler that a length-aware reward can teach away)."""
        expression, answer = problem.data["expression"], problem.answer
        return _STYLES[self.demonstration_style].format(expression=expression, answer=answer)

    def score(self, problem: base.Problem, completion: str) -> base.Score:
        truth = int(problem.answer)
        answer = base.last_answer(completion)
        correct = parse_strict_int(answer) == truth
        formatted = answer is not None
        lenient = last_number(completion) == truth
        return base.tiered_score(correct, lenient, formatted)

"""A toy task for checking that the RL loop learns: the reward is the share of one word in the
completion. Meant for tiny random models in tests (its prompts are short word lists), not for
measuring anything about language models."""

from __future__ import annotations

from dataclasses import dataclass

from actors.trainers.rl.tasks.base import Problem, Score, problem_rng, register_task


@register_task("token_share")
@dataclass
class TokenShareTask:
    """Knobs:
        target: the word whose share of the completion's words is the reward.
        vocabulary: prompt words are ``t0`` .. ``t{vocabulary-1}``.
        prompt_words: words per prompt.
    """

    target: str = "t7"
    vocabulary: int = 60
    prompt_words: int = 4

    def problem(self, seed: int, index: int) -> Problem:
        rng = problem_rng(self.name, seed, index)
        words = " ".join(f"t{rng.randrange(self.vocabulary)}" for _ in range(self.prompt_words))
        return Problem(self.name, index, words, self.target)

    def score(self, problem: Problem, completion: str) -> Score:
        words = completion.split()
        share = words.count(self.target) / len(words) if words else 0.0
        return Score(reward=share, correct=share >= 0.5, lenient=share > 0, formatted=bool(words))

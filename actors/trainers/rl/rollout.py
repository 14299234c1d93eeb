"""Rollouts for one RL step: n seeded samples per problem from the speculative engine, kept as
token ids (never re-encoded) with the engine's log-probs and the weights' version.

The engine is anything with ``generate(prompts, params) -> list[GenerationResult]``: an
:class:`~actors.engine.Engine` in tests, a Ray engine actor in the job (wrapped with a timeout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from actors.messages import SamplingParams
from actors.models import encode_chat
from actors.requests import GenerationResult
from actors.trainers.rl.tasks import Problem, Score, Task

Generate = Callable[[list[list[int]], list[SamplingParams]], list[GenerationResult]]


@dataclass
class Sample:
    """One completion of one problem.

    Attributes:
        problem: what was asked.
        prompt_ids: the prompt in the chat template.
        token_ids: the completion (an EOS that ended it is its last token: an action).
        logprobs: the engine's log-prob of each completion token (temperature applied).
        text: the decoded completion.
        finish_reason: ``stop`` or ``length``.
        policy_version: the version of the weights that sampled it.
        steps: verifier steps it took (speculation: tokens per step = len / steps).
        score: the task's verdict on ``text``.
        reward: the reward after the length terms.
    """

    problem: Problem
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    policy_version: int
    steps: int
    score: Score | None = None
    reward: float = 0.0


def sample_seed(seed: int, step: int, problem: int, sample: int, mode: str) -> int:
    """The sampling seed of sample ``sample`` of problem ``problem``: a pure function of the run's
    seed and those indices (and of the step unless ``mode == "coupled"``), 31 bits."""
    key = f"{seed}:{problem}:{sample}" if mode == "coupled" else f"{seed}:{step}:{problem}:{sample}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") >> 1


class Prompter:
    """Problems → prompt token ids: ``few_shot`` worked examples as earlier chat turns (problems
    of their own seed, never a training or evaluation one), the problem as the user's turn, the
    chat template's generation prompt, then ``response_prefix``.

    A task may define ``demonstration(problem) -> str`` (how a worked answer reads); otherwise an
    example's answer is its tag alone.
    """

    EXAMPLE_SEED = -1

    def __init__(self, tokenizer, task: Task, few_shot: int = 0, response_prefix: str = ""):
        self.tokenizer, self.response_prefix = tokenizer, response_prefix
        show = getattr(task, "demonstration", lambda problem: f"<answer>{problem.answer}</answer>")
        self.examples: list[dict] = []
        for index in range(few_shot):
            example = task.problem(self.EXAMPLE_SEED, index)
            self.examples += [
                {"role": "user", "content": example.prompt},
                {"role": "assistant", "content": show(example)},
            ]
        prefix = tokenizer.encode(response_prefix, add_special_tokens=False) if response_prefix else []
        self.prefix_ids: list[int] = prefix

    def __call__(self, problem: Problem) -> list[int]:
        turns = [*self.examples, {"role": "user", "content": problem.prompt}]
        return encode_chat(self.tokenizer, turns) + self.prefix_ids


def collect(
    generate: Generate,
    task: Task,
    problems: list[Problem],
    prompts: list[list[int]],
    n: int,
    params: SamplingParams,
    seeds: Callable[[int, int], int] | None,
    response_prefix: str = "",
    hints: Callable[[int, int], list[int]] | None = None,
) -> list[list[Sample]]:
    """``n`` samples of every problem, scored; one group (list) per problem.

    Args:
        generate: the engine call.
        task: scores the completions.
        problems: this step's problems.
        prompts: their prompt token ids.
        n: samples per problem.
        params: sampling settings (``seed`` replaced per sample when ``seeds`` is given).
        seeds: ``seeds(problem_index, sample)`` → sampling seed; None keeps ``params.seed``.
        response_prefix: the reply's start that ends every prompt; scored as part of the reply.
        hints: ``hints(problem_index, sample)`` → the tokens that sample is expected to produce
            (its previous rollout: :attr:`~actors.messages.SamplingParams.draft_hint`); None or
            an empty list drafts as usual. Samples do not depend on it.
    """
    batch, per_request = [], []
    for problem, ids in zip(problems, prompts):
        for k in range(n):
            batch.append(ids)
            seed = seeds(problem.index, k) if seeds else params.seed
            hint = tuple(hints(problem.index, k)) if hints else params.draft_hint
            per_request.append(replace(params, seed=seed, draft_hint=hint))
    results = generate(batch, per_request)
    groups = []
    for i, (problem, ids) in enumerate(zip(problems, prompts)):
        group = [to_sample(problem, ids, result) for result in results[i * n : (i + 1) * n]]
        for sample in group:
            sample.score = task.score(problem, response_prefix + sample.text)
            sample.reward = sample.score.reward
        groups.append(group)
    return groups


def to_sample(problem: Problem, ids: list[int], result: GenerationResult) -> Sample:
    if result.logprobs is None or len(result.logprobs) != len(result.token_ids):
        raise ValueError("the engine returned no log-prob per token: ask with SamplingParams.logprobs")
    return Sample(
        problem,
        ids,
        list(result.token_ids),
        list(result.logprobs),
        result.text,
        result.finish_reason,
        result.policy_version,
        result.stats.steps,
    )

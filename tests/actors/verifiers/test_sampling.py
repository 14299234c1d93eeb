"""Speculative sampling keeps the verifier's distribution exactly (statistical tests).

Each test draws many samples with fixed seeds and compares the observed counts with the exact
target distribution by a chi-square statistic. The same harness run with a deliberately broken
acceptance rule (rejected candidates not removed from the residual) must fail, which shows the
test can tell the difference.
"""

import pytest
import torch

from actors.drafters.model import ModelDrafter
from actors.engine import Engine, EngineConfig
from actors.messages import DraftTree, SamplingParams
from actors.verifiers.acceptance import accept_sampling, children_lists, sample_targets, target_probs
from tests.actors.test_lossless import assert_stock, untouched_copy

# chi-square critical values at p = 0.001
CRITICAL = {8: 26.12, 15: 37.70, 24: 51.18, 35: 66.62, 48: 84.04, 63: 103.44}


def broken_accept_sampling(tree, probs, first_position, seed):
    """A plausible bug: also accept any drafted candidate the verifier finds likely (p >= 0.2)."""
    positions = [first_position] + [first_position + int(d) for d in tree.depths()]
    targets = sample_targets(probs, positions, seed)
    tokens, children = tree.tokens.tolist(), children_lists(tree.parents.tolist())
    accepted, row = [], 0
    while True:
        likely = [c for c in children[row] if tokens[c] == targets[row] or probs[row, tokens[c]] >= 0.2]
        if not likely:
            return accepted, targets[row]
        accepted.append(likely[0])
        row = likely[0] + 1


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, int]:
    """Statistic and degrees of freedom, pooling cells expected below 5 into one."""
    total = counts.sum()
    expected = expected_probs.flatten() * total
    observed = counts.flatten().double()
    small = expected < 5
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    stat = float(((observed - expected) ** 2 / expected).sum())
    return stat, len(expected) - 1


def critical(df: int) -> float:
    return CRITICAL.get(df) or df + 3.09 * (2 * df) ** 0.5  # normal approximation otherwise


# An analytic "verifier" over 6 tokens: p(x1) = FIRST, p(x2 | x1) = SECOND[x1].
FIRST = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.07, 0.03])
SECOND = torch.softmax(torch.arange(36, dtype=torch.float32).view(6, 6).sin() * 2, dim=-1)
TREES = {
    "chain": DraftTree(0, torch.tensor([1, 3]), torch.tensor([-1, 0]), torch.ones(2)),
    "tree": DraftTree(
        0, torch.tensor([0, 1, 2, 4, 5, 0]), torch.tensor([-1, -1, -1, 0, 0, 1]), torch.ones(6)
    ),
}


def sample_pairs(tree: DraftTree, accept, trials: int) -> torch.Tensor:
    """Joint counts ``[6, 6]`` of the first two tokens over ``trials`` speculative runs (seeds)."""
    counts = torch.zeros(6, 6)
    for seed in range(trials):
        rows = torch.stack([FIRST] + [SECOND[t] for t in tree.tokens.tolist()])
        accepted, token = accept(tree, rows, 0, seed)
        emitted = [int(tree.tokens[n]) for n in accepted] + [token]
        if len(emitted) == 1:  # a second step drafts the same shape after the new token
            rows = torch.stack([SECOND[emitted[0]]] + [FIRST] * len(tree))
            accepted, token = accept(tree, rows, 1, seed)
            emitted += [int(tree.tokens[n]) for n in accepted] + [token]
        counts[emitted[0], emitted[1]] += 1
    return counts


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_tree_sampling_matches_target(shape):
    counts = sample_pairs(TREES[shape], accept_sampling, 20000)
    stat, df = chi_square(counts, FIRST[:, None] * SECOND)
    assert stat < critical(df)


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_broken_acceptance_is_detected(shape):
    counts = sample_pairs(TREES[shape], broken_accept_sampling, 20000)
    stat, df = chi_square(counts, FIRST[:, None] * SECOND)
    assert stat > critical(df)


def test_target_probs_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(top_k, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    top_p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.allclose(top_p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    cold = target_probs(logits, SamplingParams(temperature=0.5))
    assert cold[0, 0] > 0.5 and torch.isclose(cold.sum(), torch.tensor(1.0))


def engine_pairs(verifier, draft_model, tokenizer, trials: int) -> torch.Tensor:
    from actors.models import LoadedModel

    config = EngineConfig(
        device="cpu",
        max_batch_size=64,
        max_model_len=64,
        max_draft_nodes=6,
        max_draft_depth=3,
        adaptive_budget=False,
    )
    drafter = ModelDrafter(draft_model, 64, 64, branching=3, threshold=0.0)
    engine = Engine(config, LoadedModel(verifier, tokenizer, "tiny"), drafter)
    params = [
        SamplingParams(max_new_tokens=2, temperature=1.0, ignore_eos=True, seed=s) for s in range(trials)
    ]
    results = engine.generate([[1, 2, 3]] * trials, params)
    counts = torch.zeros(8, 8)
    for result in results:
        counts[result.token_ids[0], result.token_ids[1]] += 1
    return counts


def exact_pairs(model) -> torch.Tensor:
    assert_stock(model)
    with torch.no_grad():
        first = model(torch.tensor([[1, 2, 3]])).logits[0, -1].softmax(-1)
        second = model(torch.tensor([[1, 2, 3, t] for t in range(8)])).logits[:, -1].softmax(-1)
    return first[:, None] * second


@pytest.mark.parametrize("broken", [False, True])
def test_engine_sampling_matches_target(make_tiny, tiny_tokenizer, monkeypatch, broken):
    """End to end on a tiny 8-token model with a tiny model drafting 3-way trees."""
    verifier = make_tiny(seed=0, vocab=8, spread=0.15)
    drafter = make_tiny(seed=5, vocab=8, spread=0.15, layers=1)
    reference = untouched_copy(verifier)
    if broken:
        monkeypatch.setattr("actors.verifiers.verifier.accept_sampling", broken_accept_sampling)
    counts = engine_pairs(verifier, drafter, tiny_tokenizer, 3000)
    stat, df = chi_square(counts, exact_pairs(reference))
    assert (stat > critical(df)) if broken else (stat < critical(df))


def plain_sampling(model, prompt: list[int], params: SamplingParams) -> list[int]:
    """The verifier sampling alone with the seed's noise at each position (one full forward of
    the stock model per token)."""
    assert_stock(model)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(params.max_new_tokens):
            probs = target_probs(model(torch.tensor([ids])).logits[0, -1:], params)
            ids += sample_targets(probs, [len(ids)], params.seed)
    return ids[len(prompt) :]


@pytest.mark.parametrize("drafter", ["none", "ngram", "model"])
def test_seeded_sampling_equals_plain_sampling(tiny_lm, tiny_model_dir, drafter):
    """With the same seeds, speculative sampling emits exactly what plain sampling emits."""
    spec = f"model:{tiny_model_dir}" if drafter == "model" else drafter
    prompts = [[5, 9, 2, 6, 5, 3] * 3, [1, 4, 1, 5], [7] * 9]
    params = [
        SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.95, seed=s, ignore_eos=True)
        for s in range(3)
    ]
    expected = [plain_sampling(tiny_lm.model, p, q) for p, q in zip(prompts, params)]  # before the engine
    engine = Engine(EngineConfig(device="cpu", drafter=spec, max_batch_size=3, max_model_len=128), tiny_lm)
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected

"""Greedy speculative output equals the verifier's own greedy output, token for token.

The reference is the verifier as transformers builds it. An engine changes its model in place (on
a CPU its linear layers become the weight-major product of actors/cpu_linear.py, and the lean
decoder makes the q/k/v and gate/up projections views of fused layers), so a reference run on the
engine's model would share any bug of those: references decode with a copy taken before the
engine is built (:func:`untouched_copy`), and :func:`plain_greedy` refuses a model that is not stock.
"""

import copy
import random

import pytest
import torch
from torch import nn

from actors.drafters.base import Drafter
from actors.drafters.model import ModelDrafter
from actors.engine import Engine, EngineConfig
from actors.messages import DraftTree, SamplingParams


def assert_stock(model: nn.Module) -> None:
    """``model`` runs transformers' own modules: every linear layer a plain ``nn.Linear`` over a
    weight of its own (not the engine's weight-major product, not a view into a fused projection)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert type(module) is nn.Linear, f"{name} is a {type(module).__name__}, not transformers' own"
            weight = module.weight
            own_bytes = weight.numel() * weight.element_size()
            assert weight.untyped_storage().nbytes() == own_bytes, f"{name}'s weight is a view of a fused one"


def untouched_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as transformers built it, for the reference: take it before an engine
    is built over ``model``."""
    assert_stock(model)
    return copy.deepcopy(model)


def plain_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """The verifier decoding alone, without any cache tricks: one full forward per token of the
    stock model (:func:`assert_stock`)."""
    assert_stock(model)
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    # ragged lengths; a few repeated patterns so n-gram drafters find matches
    out = []
    for i in range(count):
        motif = [rng.randrange(62) for _ in range(3)]
        out.append(motif * (1 + i % 3) + [rng.randrange(62) for _ in range(1 + 5 * i)])
    return out


class OracleTreeDrafter(Drafter):
    """Drafts trees that hide the true continuation among decoys at random places, so acceptance
    walks deep paths through non-first branches and compaction moves KV around."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], seed: int = 0):
        self.by_prompt, self.answers = answers, {}
        self.rng, self.done = random.Random(seed), {}

    def add(self, seq_id, prompt_ids):
        self.answers[seq_id] = self.by_prompt[tuple(prompt_ids)]
        self.done[seq_id] = 0

    def release(self, seq_id):
        del self.done[seq_id]

    def commit(self, verdicts):
        for verdict in verdicts:
            self.done[verdict.seq_id] += len(verdict.tokens)

    def propose(self, seq_ids, budgets, assume=None):
        return [self._tree(s, b.max_nodes) for s, b in zip(seq_ids, budgets)]

    def _tree(self, seq_id, max_nodes):
        truth = self.answers[seq_id][self.done[seq_id] : self.done[seq_id] + 4]
        if self.rng.random() < 0.3 and truth:  # sometimes a wrong token on the path
            truth = truth[:-1] + [(truth[-1] + 1) % 62]
        tokens, parents, parent = [], [], -1
        for token in truth:
            decoys = [(token + d) % 62 for d in (5, 9)][: self.rng.randrange(3)]
            siblings = decoys + [token]
            self.rng.shuffle(siblings)
            for sibling in siblings:
                tokens.append(sibling)
                parents.append(parent)
            parent = len(tokens) - len(siblings) + siblings.index(token)
        # re-sort into BFS order is unnecessary: levels were appended in depth order
        keep = min(len(tokens), max_nodes)
        return DraftTree(seq_id, torch.tensor(tokens[:keep]), torch.tensor(parents[:keep]), torch.ones(keep))


@pytest.mark.parametrize("drafter", ["none", "ngram", "early-exit:1", "model"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_greedy_equals_plain_decoding(tiny_lm, tiny_model_dir, drafter, batch_size):
    spec = f"model:{tiny_model_dir}" if drafter == "model" else drafter
    reference = untouched_copy(tiny_lm.model)
    engine = Engine(
        EngineConfig(device="cpu", drafter=spec, max_batch_size=batch_size, max_model_len=256), tiny_lm
    )
    batch = prompts(5)
    results = engine.generate(batch, SamplingParams(max_new_tokens=24, ignore_eos=True))
    for prompt, result in zip(batch, results):
        assert result.token_ids == plain_greedy(reference, prompt, 24)
        assert result.stats.new_tokens == 24


def test_greedy_trees_with_deep_acceptance(tiny_lm):
    batch = prompts(4, seed=3)
    answers = [plain_greedy(tiny_lm.model, p, 30) for p in batch]
    config = EngineConfig(
        device="cpu", max_batch_size=2, max_model_len=256, max_draft_nodes=16, adaptive_budget=False
    )
    engine = Engine(config, tiny_lm, OracleTreeDrafter({tuple(p): a for p, a in zip(batch, answers)}))
    results = engine.generate(batch, SamplingParams(max_new_tokens=30, ignore_eos=True))
    assert [r.token_ids for r in results] == answers
    assert sum(r.stats.accepted for r in results) > 40  # deep paths were accepted


def test_self_drafting_accepts_everything(tiny_lm):
    """A drafter identical to the verifier has every greedy draft accepted."""
    config = EngineConfig(
        device="cpu", max_model_len=256, max_draft_nodes=4, max_draft_depth=4, adaptive_budget=False
    )
    reference = untouched_copy(tiny_lm.model)
    drafter = ModelDrafter(tiny_lm.model, 8, 256, branching=1, threshold=0.0)
    engine = Engine(config, tiny_lm, drafter)
    (result,) = engine.generate(prompts(1), SamplingParams(max_new_tokens=25, ignore_eos=True))
    assert result.token_ids == plain_greedy(reference, prompts(1)[0], 25)
    assert result.stats.mean_accepted_tokens == 5.0  # 4 drafts + 1 bonus per step


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; test_gpu_lossless covers CUDA")
@pytest.mark.parametrize("drafter", ["ngram", "early-exit:1"])
def test_greedy_with_the_triton_kernel(tiny_lm, drafter):
    """The verifier with the Triton tree-attention kernel (interpreted on CPU) is lossless too."""
    config = EngineConfig(
        device="cpu", drafter=drafter, attention="triton", max_batch_size=2, max_model_len=128
    )
    reference = untouched_copy(tiny_lm.model)
    engine = Engine(config, tiny_lm)
    batch = prompts(2)
    results = engine.generate(batch, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 12) for p in batch]

"""The lean decoder computes what transformers' forward computes, for every architecture it takes."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from actors.engine import Engine, EngineConfig
from actors.lean_decoder import LeanDecoder
from actors.messages import SamplingParams
from actors.models import LoadedModel
from actors.tree_model import TreeInput, TreeModel
from tests.actors.test_lossless import plain_greedy, prompts, untouched_copy
from tests.conftest import TINY_SHAPE

SHAPE = TINY_SHAPE | dict(initializer_range=0.5, tie_word_embeddings=False)
FAMILY = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE, attention_bias=True)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SHAPE)),  # q/k/v biases, no o_proj bias
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SHAPE, head_dim=32)),  # heads * dim != hidden
}


def build(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILY[kind]().eval().requires_grad_(False)
    for name, param in model.named_parameters():  # random biases, not transformers' zeros
        if name.endswith("bias"):
            param.normal_(0, 0.5)
    return model


def prefill_then_tree(runner: TreeModel) -> torch.Tensor:
    """Hidden states of a prompt, then of a 5-node tree (two branches) over it."""
    prompt = prompts(1, seed=4)[0]
    causal = torch.ones(len(prompt), len(prompt), dtype=torch.bool).tril()
    first = runner.forward([TreeInput(0, 0, len(prompt), prompt, list(range(len(prompt))), causal)])
    parents = [-1, 0, 0, 1, 2]
    ancestors = torch.eye(5, dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            ancestors[node] |= ancestors[parent]
    depth = [0, 1, 1, 2, 2]
    tree = TreeInput(0, len(prompt), 5, [3, 9, 11, 5, 7], [len(prompt) + d for d in depth], ancestors)
    return torch.cat([first[0], runner.forward([tree])[0]])


@pytest.mark.parametrize("kind", list(FAMILY))
def test_hidden_states_equal_transformers_forward(kind):
    model = build(kind)
    # transformers' forward with the tree attention function, on layers the lean decoder never fused
    plain = TreeModel(untouched_copy(model), 1, 64, decoder="transformers")
    lean = TreeModel(model, 1, 64)
    assert lean.decoder is not None and plain.decoder is None
    torch.testing.assert_close(prefill_then_tree(lean), prefill_then_tree(plain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(FAMILY))
def test_greedy_speculation_stays_lossless(kind, tiny_tokenizer):
    model = build(kind, seed=1)
    reference = untouched_copy(model)
    loaded = LoadedModel(model=model, tokenizer=tiny_tokenizer, name=kind)
    engine = Engine(EngineConfig(device="cpu", max_model_len=256, max_batch_size=3), loaded)
    assert engine.verifier.runner.decoder is not None
    batch = prompts(3, seed=2)
    results = engine.generate(batch, SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 20) for p in batch]


def test_fused_projections_hold_the_parameters_once_and_see_in_place_loads():
    model = build("qwen2")
    keys = list(model.state_dict())
    runner = TreeModel(model, 1, 64)
    assert list(model.state_dict()) == keys  # checkpoints load and save as before
    attention = model.model.layers[0].self_attn
    fused = runner.decoder.layers[0].qkv
    assert attention.q_proj.weight.data_ptr() == fused.weight.data_ptr()
    assert attention.k_proj.bias.data_ptr() == fused.bias.data_ptr() + attention.q_proj.out_features * 4
    before = prefill_then_tree(TreeModel(model, 1, 64))
    state = {k: v + 0.1 if k.endswith("v_proj.weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert torch.equal(fused.weight[-attention.v_proj.out_features :], attention.v_proj.weight)
    assert not torch.allclose(prefill_then_tree(TreeModel(model, 1, 64)), before)
    assert TreeModel(model, 1, 64).decoder.layers[0].qkv is fused  # fused once, shared after


def test_other_architectures_run_through_transformers():
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)
    assert LeanDecoder.of(GPT2LMHeadModel(config)) is None


def test_decoder_transformers_runs_every_layer_through_transformers(tiny_lm):
    reference = untouched_copy(tiny_lm.model)
    config = EngineConfig(device="cpu", max_model_len=256, drafter="early-exit:1", decoder="transformers")
    engine = Engine(config, tiny_lm)
    assert engine.verifier.runner.decoder is None and engine.link.worker.drafter.runner.decoder is None
    batch = prompts(2, seed=7)
    results = engine.generate(batch, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 12) for p in batch]


def test_an_unknown_decoder_is_refused_by_name(tiny_lm):
    with pytest.raises(ValueError, match="decoder must be auto or transformers"):
        Engine(EngineConfig(device="cpu", decoder="fast"), tiny_lm)

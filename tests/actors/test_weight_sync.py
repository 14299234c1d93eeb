"""Live verifier weight swap (``Engine.load_weights``): every copy of a weight the engine reads
sees the new values (lean decoder's fused layers, the few-row CPU product, tied embeddings,
early-exit and heads drafters' shared tensors), results carry the policy version, and bad calls
are refused, naming why, without changing anything."""

import asyncio
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actors.cpu_linear import WeightMajorLinear
from actors.drafters.heads import HeadsDrafter, MedusaHeads
from actors.drafters.model import ModelDrafter
from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.models import LoadedModel
from kernels.cpu_gemm import few_rows_gemm, unusable_reason
from tests.conftest import TINY_SHAPE, make_tiny_model

ENGINE = dict(device="cpu", max_batch_size=2, max_model_len=128, max_draft_nodes=8)
PROMPTS = [[1, 2, 3, 1, 2, 3, 4], [5, 6, 7, 8, 9, 5, 6, 7], [10, 11]]
NEW_TOKENS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_greedy(model, prompt: list[int]) -> list[int]:
    """Hugging Face ``generate`` (greedy) of an untouched model: the new tokens, EOS included."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=63
        )
    return out[0, len(prompt) :].tolist()


def engine_over(model, tokenizer, drafter: str = "ngram", **overrides) -> Engine:
    """An engine (decoder auto: the lean decoder) over ``model``; ``drafter`` ``heads`` builds
    random Medusa heads over its LM head with a draft vocabulary cut."""
    config = EngineConfig(**ENGINE | overrides | {"drafter": "none" if drafter == "heads" else drafter})
    custom = None
    if drafter == "heads":
        torch.manual_seed(0)
        heads = MedusaHeads(model.config.hidden_size, 2)
        for block in heads.blocks:
            torch.nn.init.normal_(block.weight, std=0.5)
        custom = HeadsDrafter(heads, model.lm_head, vocab=32)
    return Engine(config, LoadedModel(model, tokenizer, "tiny"), custom)


def greedy(engine: Engine):
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS))


def assert_engine_holds(engine: Engine, source_state: dict) -> None:
    """Every parameter the engine reads equals the source's, through every alias."""
    state = engine.model.state_dict()
    assert state.keys() == source_state.keys()
    for key, value in source_state.items():
        assert torch.equal(state[key], value), key
    layers = engine.model.model.layers
    for index, fused in enumerate(engine.verifier.runner.decoder.layers):  # the lean decoder's own
        attention, mlp = layers[index].self_attn, layers[index].mlp
        qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        assert torch.equal(fused.qkv.weight, qkv)
        assert torch.equal(fused.gate_up.weight, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))


@pytest.mark.parametrize("drafter", ["ngram", "early-exit:1", "heads"])
def test_swap_reaches_every_copy_and_greedy_equals_hf_generate_of_the_source(tiny_tokenizer, drafter):
    extra = {"draft_vocab": 32} if drafter == "early-exit:1" else {}
    engine = engine_over(make_tiny_model(seed=0), tiny_tokenizer, drafter, **extra)
    # the paths a stale copy would hide in are on
    assert engine.verifier.runner.decoder is not None
    assert isinstance(engine.model.model.layers[0].mlp.down_proj, WeightMajorLinear)
    assert isinstance(engine.verifier.runner.decoder.layers[0].qkv, WeightMajorLinear)
    if unusable_reason() is None:  # x86 Linux with a compiler: the compiled few-row product runs
        assert few_rows_gemm() is not None
    before = greedy(engine)  # caches, recycled top-k and drafter state filled with the old weights
    assert {r.policy_version for r in before} == {0}

    source = make_tiny_model(seed=7)  # same config, other weights
    engine.load_weights(source.state_dict(), version=1)
    assert engine.policy_version == 1
    assert_engine_holds(engine, source.state_dict())
    if drafter == "early-exit:1":  # its layers and its draft-vocabulary head are views
        runner = engine.link.worker.drafter.runner
        torch.testing.assert_close(
            runner.model.model.layers[0].mlp.up_proj.weight,
            source.model.layers[0].mlp.up_proj.weight,
            rtol=0,
            atol=0,
        )
    if drafter in ("early-exit:1", "heads"):
        head = engine.link.worker.drafter.head
        assert torch.equal(head.weight, source.lm_head.weight[:32])
    after = greedy(engine)
    assert [r.token_ids for r in after] == [hf_greedy(source, p) for p in PROMPTS]
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
    assert {r.policy_version for r in after} == {1}


def test_partial_state_dict_updates_only_its_keys(tiny_tokenizer):
    model = make_tiny_model(seed=0)
    expected = copy.deepcopy(model)
    engine = engine_over(model, tiny_tokenizer)
    greedy(engine)  # anything built lazily on the old weights would go stale
    source = make_tiny_model(seed=7)
    partial = {k: v for k, v in source.state_dict().items() if k.startswith("model.layers.1.")}
    engine.load_weights(partial, version=3)
    expected.load_state_dict(partial, strict=False)
    assert_engine_holds(engine, expected.state_dict())
    results = greedy(engine)
    assert [r.token_ids for r in results] == [hf_greedy(expected, p) for p in PROMPTS]
    assert {r.policy_version for r in results} == {3}


def tied_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        **TINY_SHAPE, initializer_range=0.5, eos_token_id=62, pad_token_id=63, tie_word_embeddings=True
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def test_tied_embeddings_take_the_new_values_under_either_name(tiny_tokenizer):
    engine = engine_over(tied_model(0), tiny_tokenizer)
    assert engine.model.lm_head.weight is engine.model.model.embed_tokens.weight
    greedy(engine)
    source = tied_model(5)
    engine.load_weights({"model.embed_tokens.weight": source.model.embed_tokens.weight}, version=1)
    assert torch.equal(engine.model.lm_head.weight, source.lm_head.weight)
    engine.load_weights(source.state_dict(), version=2)  # both names, one tensor
    assert [r.token_ids for r in greedy(engine)] == [hf_greedy(source, p) for p in PROMPTS]
    state = source.state_dict()
    clash = {
        "lm_head.weight": state["lm_head.weight"] + 1,
        "model.embed_tokens.weight": state["lm_head.weight"],
    }
    with pytest.raises(ValueError, match="model.embed_tokens.weight and lm_head.weight are one tied tensor"):
        engine.load_weights(clash, version=3)
    assert engine.policy_version == 2


def test_bad_state_dicts_are_refused_naming_the_key_and_change_nothing(tiny_tokenizer):
    engine = engine_over(make_tiny_model(seed=0), tiny_tokenizer, drafter="none")
    original = {k: v.clone() for k, v in engine.model.state_dict().items()}
    good = make_tiny_model(seed=7).state_dict()
    with pytest.raises(ValueError, match=r"name no parameter .*model\.layers\.9\.mlp\.up_proj\.weight"):
        engine.load_weights(good | {"model.layers.9.mlp.up_proj.weight": torch.zeros(3)}, version=1)
    wrong = dict(good)
    wrong["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(
        ValueError,
        match=r"model\.layers\.1\.self_attn\.k_proj\.weight: shape \(64, 64\) .* verifier's \(32, 64\)",
    ):
        engine.load_weights(wrong, version=1)
    with pytest.raises(ValueError, match="lm_head.weight: expected a tensor, got list"):
        engine.load_weights({"lm_head.weight": [[0.0]]}, version=1)
    with pytest.raises(ValueError, match="version must be an int"):
        engine.load_weights(good, version="1")
    for key, value in engine.model.state_dict().items():  # the valid keys before the bad one too
        assert torch.equal(value, original[key]), key
    assert engine.policy_version == 0


def test_swap_refused_while_a_request_waits_or_runs(tiny_tokenizer):
    engine = engine_over(make_tiny_model(seed=0), tiny_tokenizer, drafter="none")
    state = make_tiny_model(seed=7).state_dict()

    async def scenario():
        request = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=200, ignore_eos=True))
        with pytest.raises(ValueError, match=r"0 request\(s\) running and 1 waiting"):
            engine.load_weights(state, version=1)
        while not engine.num_running:
            await asyncio.sleep(0)
        with pytest.raises(ValueError, match=r"1 request\(s\) running and 0 waiting"):
            engine.load_weights(state, version=1)
        engine.abort(request.seq_id)
        while not request.done:
            await asyncio.sleep(0)
        engine.load_weights(state, version=1)  # idle again: accepted
        return request

    request = asyncio.run(scenario())
    assert request.result().policy_version == 0 and engine.policy_version == 1


def test_model_drafter_keeps_its_own_weights(tiny_tokenizer):
    """A separate draft model is not the policy: the swap leaves it alone; output follows the
    verifier."""
    draft = make_tiny_model(seed=1, layers=1)
    draft_before = {k: v.clone() for k, v in draft.state_dict().items()}
    config = EngineConfig(**ENGINE | {"drafter": "none"})
    engine = Engine(
        config, LoadedModel(make_tiny_model(seed=0), tiny_tokenizer, "tiny"), ModelDrafter(draft, 2, 128)
    )
    greedy(engine)
    source = make_tiny_model(seed=7)
    engine.load_weights(source.state_dict(), version=1)
    assert all(torch.equal(v, draft_before[k]) for k, v in draft.state_dict().items())
    assert [r.token_ids for r in greedy(engine)] == [hf_greedy(source, p) for p in PROMPTS]

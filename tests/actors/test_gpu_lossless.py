"""On CUDA: the verifier with the Triton tree-attention kernel gives the same greedy output as with
the PyTorch reference, and as plain decoding."""

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.models import LoadedModel
from tests.actors.test_lossless import untouched_copy

pytestmark = pytest.mark.gpu


def gpu_model(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,  # head_dim 64, GQA group 4
        initializer_range=0.1,
        max_position_embeddings=1024,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False).to("cuda", dtype)


@pytest.mark.parametrize("drafter", ["ngram", "early-exit:2"])
def test_triton_matches_reference_end_to_end(tiny_tokenizer, drafter):
    model = gpu_model(torch.float32)
    reference = untouched_copy(model)  # the engines fuse the model's projections in place
    prompts = [[(7 * i + j) % 60 for j in range(40 + 9 * i)] for i in range(3)]
    outputs = {}
    for backend in ("triton", "reference"):
        config = EngineConfig(drafter=drafter, attention=backend, max_batch_size=3, max_model_len=512)
        engine = Engine(config, LoadedModel(model, tiny_tokenizer, "gpu-tiny"))
        results = engine.generate(prompts, SamplingParams(max_new_tokens=32, ignore_eos=True))
        outputs[backend] = [r.token_ids for r in results]
    assert outputs["triton"] == outputs["reference"]
    ids = [torch.tensor([p], device="cuda") for p in prompts]
    plain = [reference.generate(i, max_new_tokens=32, do_sample=False)[0, i.shape[1] :].tolist() for i in ids]
    assert outputs["triton"] == plain

"""Lossless on the real embedded model: SmolLM2-135M-Instruct, greedy, every drafter.

The reference is Hugging Face ``generate`` on a load of its own, never given to an engine (which
swaps in its own linear layers and fused projections: tests/actors/test_lossless.py).
"""

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.models import load_model
from tests.actors.test_lossless import assert_stock

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three colours.",
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("default", "float32")


@pytest.fixture(scope="module")
def reference():
    """A load of its own for Hugging Face ``generate``: no engine is ever built over it."""
    return load_model("default", "float32").model


@pytest.mark.parametrize(
    ("drafter", "draft_vocab"),
    [("ngram", 0), ("early-exit:6", 0), ("model:distilled", 8192), ("ngram+heads:distilled", 4096)],
)
def test_greedy_equals_hf_generate(smollm2, reference, drafter, draft_vocab):
    config = EngineConfig(
        device="cpu", drafter=drafter, draft_vocab=draft_vocab, max_batch_size=2, max_model_len=512
    )
    engine = Engine(config, smollm2)
    prompts = [engine.encode(p) for p in PROMPTS]
    results = engine.generate(prompts, SamplingParams(max_new_tokens=40))
    assert_stock(reference)
    for prompt, result in zip(prompts, results):
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
        assert result.token_ids == expected[0, len(prompt) :].tolist()

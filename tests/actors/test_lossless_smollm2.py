"""Lossless on the real embedded model: SmolLM2-135M-Instruct, greedy, every drafter."""

import pytest
import torch

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.models import load_model

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three colours.",
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("default", "float32")


@pytest.mark.parametrize(
    ("drafter", "draft_vocab"),
    [("ngram", 0), ("early-exit:6", 0), ("model:distilled", 8192), ("ngram+heads:distilled", 4096)],
)
def test_greedy_equals_hf_generate(smollm2, drafter, draft_vocab):
    config = EngineConfig(
        device="cpu", drafter=drafter, draft_vocab=draft_vocab, max_batch_size=2, max_model_len=512
    )
    engine = Engine(config, smollm2)
    prompts = [engine.encode(p) for p in PROMPTS]
    results = engine.generate(prompts, SamplingParams(max_new_tokens=40))
    for prompt, result in zip(prompts, results):
        expected = smollm2.model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
        assert result.token_ids == expected[0, len(prompt) :].tolist()

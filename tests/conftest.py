"""Session-wide test setup.

TRITON_INTERPRET must be set before any module decorates a kernel with ``@triton.jit``, so it
is set here, first, whenever no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

#: the layout of the tiny random Llama-family models the tests build
TINY_SHAPE = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models gain nothing from threads, and on a loaded 2-core machine OpenMP threads waiting
    for each other made a step 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A word-level tokenizer over 64 symbols ("t0" .. "t61", plus <eos> and <pad>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(62)} | {"<eos>": 62, "<pad>": 63}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")


def make_tiny_model(seed: int = 0, layers: int = 2, vocab: int = 64, spread: float = 0.5):
    """A random Llama with well-separated logits (large init), so greedy argmaxes are stable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **TINY_SHAPE | dict(vocab_size=vocab, num_hidden_layers=layers),
        initializer_range=spread,
        eos_token_id=62 if vocab > 63 else None,
        pad_token_id=63 if vocab > 63 else None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    from actors.models import LoadedModel

    return LoadedModel(model=make_tiny_model(), tokenizer=tiny_tokenizer, name="tiny")


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A tiny random model saved as an HF folder (seed 1: differs from the verifier)."""
    path = tmp_path / "tiny-draft"
    make_tiny_model(seed=1, layers=1).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make_tiny():
    """The tiny-model factory, for tests that need several models."""
    return make_tiny_model

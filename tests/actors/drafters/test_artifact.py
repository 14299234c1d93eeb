"""Compact drafter folders: own tensors in bfloat16, the verifier's shared ones left out."""

import json

import pytest
import torch

from actors.drafters.artifact import BUNDLED, SHARED_FILE, load_drafter, save_compact
from actors.trainers.students import save_student, student_from_verifier
from tests.conftest import make_tiny_model


@pytest.fixture
def student(tiny_lm):
    student = student_from_verifier(tiny_lm.model, [0])
    with torch.no_grad():  # trained: its layer and norm no longer equal the verifier's
        student.model.layers[0].mlp.up_proj.weight.add_(0.01)
        student.model.norm.weight.add_(0.01)
    return student


def test_compact_folder_leaves_out_what_the_verifier_has(tiny_lm, student, tmp_path):
    folder = save_compact(student, tiny_lm.tokenizer, tmp_path / "compact", tiny_lm.model)
    shared = json.loads((folder / SHARED_FILE).read_text())["from_verifier"]
    trained = {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    assert shared == sorted(set(student.state_dict()) - trained)  # untouched copies of the verifier's
    full = save_student(student, tiny_lm.tokenizer, tmp_path / "full")
    assert (folder / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size / 2

    loaded = load_drafter(str(folder), "float32", tiny_lm.model)
    want = student.state_dict()
    for name, tensor in loaded.state_dict().items():  # own tensors went through bfloat16
        expected = want[name] if name in shared else want[name].to(torch.bfloat16).float()
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0)
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded(x).logits, student(x).logits, rtol=0.05, atol=0.05)


def test_compact_folder_loads_from_a_verifier_spec_and_refuses_a_misfit(tiny_lm, student, tmp_path):
    folder = save_compact(student, tiny_lm.tokenizer, tmp_path / "compact", tiny_lm.model)
    tiny_lm.model.save_pretrained(tmp_path / "verifier")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "verifier")
    by_spec = load_drafter(str(folder), "float32", str(tmp_path / "verifier"))
    torch.testing.assert_close(
        by_spec.model.embed_tokens.weight, tiny_lm.model.model.embed_tokens.weight, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="needs the verifier's"):
        load_drafter(str(folder), "float32", make_tiny_model(vocab=32))


def test_a_plain_folder_loads_as_it_is(tiny_lm, student, tmp_path):
    full = save_student(student, tiny_lm.tokenizer, tmp_path / "full")
    loaded = load_drafter(str(full), "float32", tiny_lm.model)
    torch.testing.assert_close(loaded.model.norm.weight, student.model.norm.weight)


def test_the_bundled_drafter_is_compact_and_small():
    folder = BUNDLED["distilled"]
    assert json.loads((folder / SHARED_FILE).read_text())["from_verifier"] == ["model.embed_tokens.weight"]
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    assert json.loads((folder / "trainer_state.json").read_text())["step"] > 0  # with its training metrics

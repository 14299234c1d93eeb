"""A draft vocabulary: the model drafter's LM head cut to the first token ids."""

import pytest
import torch
from torch import nn

from actors.cpu_linear import WeightMajorLinear, use_weight_major
from actors.drafters.model import ModelDrafter, draft_head
from actors.engine import Engine, EngineConfig
from actors.messages import DraftBudget, SamplingParams
from tests.actors.test_lossless import plain_greedy, prompts, untouched_copy


def test_draft_head_is_a_view_of_the_first_rows():
    lm_head = nn.Linear(8, 16, bias=False)
    head = draft_head(lm_head, 6)
    assert head.out_features == 6 and head.weight.data_ptr() == lm_head.weight.data_ptr()
    with torch.no_grad():
        lm_head.weight.mul_(2)  # a hot swap loads into lm_head: the draft head sees it
    x = torch.randn(3, 8)
    torch.testing.assert_close(head(x), lm_head(x)[:, :6], rtol=1e-5, atol=1e-5)
    assert draft_head(lm_head, 0) is lm_head and draft_head(lm_head, 99) is lm_head


def test_draft_head_is_of_the_heads_kind():
    lm_head = nn.Linear(8, 16)
    use_weight_major(lm_head)  # what a float32 model on a CPU runs
    head = draft_head(lm_head, 6)
    assert type(head) is WeightMajorLinear and head.row_counts == lm_head.row_counts
    assert head.bias.data_ptr() == lm_head.bias.data_ptr()
    x = torch.randn(3, 8)
    torch.testing.assert_close(head(x), lm_head(x)[:, :6], rtol=1e-5, atol=1e-5)


def test_drafts_only_its_vocabulary(tiny_lm):
    drafter = ModelDrafter(tiny_lm.model, 2, 128, branching=4, threshold=0.0, vocab=20)
    for seq_id, prompt in enumerate(prompts(2)):
        drafter.add(seq_id, prompt)
    trees = drafter.propose([0, 1], [DraftBudget(max_nodes=12, max_depth=4, node_cost=0.0)] * 2)
    assert all(len(tree) > 0 for tree in trees)
    assert all(int(tree.tokens.max()) < 20 for tree in trees)


@pytest.mark.parametrize("drafter", ["early-exit:1", "model"])
def test_greedy_equals_plain_decoding_with_a_draft_vocabulary(tiny_lm, tiny_model_dir, drafter):
    spec = f"model:{tiny_model_dir}" if drafter == "model" else drafter
    config = EngineConfig(device="cpu", drafter=spec, draft_vocab=24, max_batch_size=2, max_model_len=256)
    reference = untouched_copy(tiny_lm.model)
    engine = Engine(config, tiny_lm)
    batch = prompts(3)
    results = engine.generate(batch, SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 20) for p in batch]


def test_negative_draft_vocabulary_is_refused(tiny_lm):
    with pytest.raises(ValueError, match="draft_vocab"):
        Engine(EngineConfig(device="cpu", drafter="early-exit:1", draft_vocab=-1), tiny_lm)

"""Medusa-style heads on the verifier's hidden states: lossless, trained on teacher rows they
raise acceptance, and they load from a heads folder and hot-swap."""

import pytest
import torch

from actors.drafters.heads import HeadsDrafter, MedusaHeads
from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.trainers.heads import HeadsConfig, train_heads
from tests.actors.test_lossless import plain_greedy, prompts, untouched_copy
from tests.conftest import make_tiny_model

ENGINE = dict(device="cpu", max_batch_size=4, max_model_len=256, max_draft_nodes=8, adaptive_budget=False)


def tokens_per_step(engine, batch, new_tokens=32):
    results = engine.generate(batch, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    return sum(r.stats.new_tokens for r in results) / sum(r.stats.steps for r in results), results


def random_heads(hidden_size, num_heads=3, seed=0):
    torch.manual_seed(seed)
    heads = MedusaHeads(hidden_size, num_heads)
    for block in heads.blocks:
        torch.nn.init.normal_(block.weight, std=0.5)
    return heads


def test_greedy_equals_plain_decoding_with_heads(tiny_lm):
    heads = random_heads(tiny_lm.model.config.hidden_size)
    reference = untouched_copy(tiny_lm.model)
    engine = Engine(EngineConfig(**ENGINE), tiny_lm, drafter=HeadsDrafter(heads, tiny_lm.model.lm_head))
    batch = prompts(4)
    _, results = tokens_per_step(engine, batch, 24)
    assert [r.token_ids for r in results] == [plain_greedy(reference, p, 24) for p in batch]
    assert all(r.stats.drafted > 0 for r in results)  # the heads drafted, the verifier corrected


def counting_verifier(steps: int = 300):
    """A tiny Llama taught to count (each token the previous plus one, modulo 62): a verifier
    whose future is learnable from its hidden state, unlike a random model's."""
    model = make_tiny_model(seed=3, spread=0.02).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, 62, (16, 1), generator=generator)
        ids = (starts + torch.arange(24)) % 62
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def counting_rows(model, count: int, offset: int) -> list[dict]:
    """Teacher rows of ``model``'s greedy counting after 4-token prompts: its top-4 at each position."""
    rows = []
    for i in range(count):
        prompt = [(offset + 7 * i + j) % 62 for j in range(4)]
        ids = torch.tensor([prompt + plain_greedy(model, prompt, 24)])
        with torch.no_grad():
            top = model(ids).logits[0, 3:-1].softmax(-1).topk(4)
        rows.append(
            {
                "input_ids": ids[0].tolist(),
                "start": 3,
                "topk_ids": top.indices.tolist(),
                "topk_probs": top.values.tolist(),
            }
        )
    return rows


def test_trained_heads_raise_acceptance_on_held_out_prompts(tiny_tokenizer):
    from actors.models import LoadedModel

    verifier = LoadedModel(counting_verifier(), tiny_tokenizer, "counting")
    train, val = counting_rows(verifier.model, 48, 0), counting_rows(verifier.model, 8, 3)
    heads, history = train_heads(verifier.model, train, val, HeadsConfig(max_steps=60, learning_rate=1e-2))
    assert history[-1]["val_top1"][0] > history[0]["val_top1"][0] + 0.5, history
    held_out = [row["input_ids"][:4] for row in val]
    expected = [plain_greedy(verifier.model, p, 32) for p in held_out]  # before an engine swaps layers
    untrained = MedusaHeads(verifier.model.config.hidden_size, 3)
    rates = {}
    for name, drafted_by in (("before", untrained), ("after", heads)):
        drafter = HeadsDrafter(drafted_by, verifier.model.lm_head)
        rates[name], results = tokens_per_step(
            Engine(EngineConfig(**ENGINE), verifier, drafter=drafter), held_out
        )
        assert [r.token_ids for r in results] == expected
    assert rates["after"] > rates["before"] + 1.0, rates


def test_a_heads_folder_loads_as_a_drafter_and_hot_swaps(tiny_lm, tmp_path):
    trained = random_heads(tiny_lm.model.config.hidden_size, seed=1)
    trained.save(tmp_path / "heads")
    loaded = MedusaHeads.load(tmp_path / "heads")
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    engine = Engine(EngineConfig(drafter=f"heads:{tmp_path / 'heads'}", **ENGINE), tiny_lm)
    drafter = engine.link.worker.drafter
    assert isinstance(drafter, HeadsDrafter) and drafter.heads.num_heads == 3
    batch = prompts(2)
    before = engine.generate(batch, SamplingParams(max_new_tokens=16, ignore_eos=True))
    engine.link.worker.load_weights(random_heads(tiny_lm.model.config.hidden_size, seed=2).state_dict())
    after = engine.generate(batch, SamplingParams(max_new_tokens=16, ignore_eos=True))
    assert [r.token_ids for r in after] == [r.token_ids for r in before]  # lossless across the swap
    assert not torch.equal(drafter.heads.blocks[0].weight, trained.blocks[0].weight)


def test_the_bundled_heads_load_by_name_and_are_trained():
    heads = MedusaHeads.load("distilled")
    assert (heads.hidden_size, heads.num_heads) == (576, 3)  # SmolLM2-135M's width
    assert all(block.weight.abs().sum() > 0 for block in heads.blocks)  # not the zero init


def test_bad_heads_are_refused_with_the_reason(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="heads.json"):
        Engine(EngineConfig(drafter=f"heads:{tmp_path}", **ENGINE), tiny_lm)
    MedusaHeads(32, 2).save(tmp_path / "other")
    with pytest.raises(ValueError, match="hidden_size 32"):
        Engine(EngineConfig(drafter=f"heads:{tmp_path / 'other'}", **ENGINE), tiny_lm)
    with pytest.raises(ValueError, match="heads:PATH"):
        Engine(EngineConfig(drafter="heads", **ENGINE), tiny_lm)
    with pytest.raises(ValueError, match="embedded default model"):  # bundled heads, another model
        Engine(EngineConfig(drafter="ngram+heads:distilled", model="/some/model", **ENGINE), tiny_lm)


def test_heads_guesses_join_the_ngram_tree():
    """Head ``d``'s top token is drafted at depth ``d + 1`` where lookup and recycling know
    nothing; before a verdict brings a hidden state there is nothing to draft."""
    from actors.drafters.ngram import NgramDrafter
    from actors.messages import DraftBudget, Verdict

    heads = MedusaHeads(hidden_size=4, num_heads=2)
    with torch.no_grad():  # on a zero hidden state, head k outputs silu(bias k)
        heads.blocks[0].bias.copy_(torch.tensor([10.0, 0, 0, 0]))
        heads.blocks[1].bias.copy_(torch.tensor([0, 10.0, 0, 0]))
    lm_head = torch.nn.Linear(4, 16, bias=False)
    with torch.no_grad():
        lm_head.weight.zero_()
        lm_head.weight[7, 0] = lm_head.weight[9, 1] = 1.0  # head 0 says 7, head 1 says 9
    drafter = NgramDrafter(heads=HeadsDrafter(heads, lm_head))
    assert drafter.wants_hidden
    drafter.add(0, [1, 2, 3])
    budget = DraftBudget(max_nodes=4, max_depth=4)
    (tree,) = drafter.propose([0], [budget])
    assert len(tree) == 0
    drafter.commit([Verdict(0, tokens=[4], accepted_nodes=[], num_drafted=0, hidden=torch.zeros(4))])
    (tree,) = drafter.propose([0], [budget])
    assert tree.tokens.tolist() == [7, 9] and tree.parents.tolist() == [-1, 0]


def test_ngram_plus_heads_is_lossless_and_hot_swaps(tiny_lm, tmp_path):
    from actors.drafters.ngram import NgramDrafter

    random_heads(tiny_lm.model.config.hidden_size, seed=1).save(tmp_path / "heads")
    reference = untouched_copy(tiny_lm.model)
    engine = Engine(EngineConfig(drafter=f"ngram+heads:{tmp_path / 'heads'}", **ENGINE), tiny_lm)
    drafter = engine.link.worker.drafter
    assert isinstance(drafter, NgramDrafter) and isinstance(drafter.heads, HeadsDrafter)
    batch = prompts(4)
    _, before = tokens_per_step(engine, batch, 24)
    assert [r.token_ids for r in before] == [plain_greedy(reference, p, 24) for p in batch]
    assert all(r.stats.drafted > 0 for r in before)
    swapped = random_heads(tiny_lm.model.config.hidden_size, seed=2)
    engine.link.worker.load_weights(swapped.state_dict())
    assert torch.equal(drafter.heads.heads.blocks[0].weight, swapped.blocks[0].weight)
    _, after = tokens_per_step(engine, batch, 24)
    assert [r.token_ids for r in after] == [r.token_ids for r in before]
    with pytest.raises(ValueError, match="ngram\\+heads:PATH"):
        Engine(EngineConfig(drafter="ngram+heads", **ENGINE), tiny_lm)


def test_heads_training_resumes_from_its_checkpoint(tiny_lm, tmp_path):
    """Stopped after step 3 of 6 and started again, training ends with the heads of a run that
    was never stopped; the checkpoint is safetensors and JSON only (nothing to unpickle); a
    checkpoint of other settings is refused with the key named."""
    model = tiny_lm.model
    train, val = counting_rows(model, 12, 0), counting_rows(model, 4, 3)
    config = HeadsConfig(max_steps=6, batch_size=4, learning_rate=1e-2)
    straight, history = train_heads(model, train, val, config, log=lambda m: None)

    def stop_after_step_3(message):
        if isinstance(message, dict) and message["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_heads(model, train, val, config, log=stop_after_step_3, checkpoint=tmp_path)
    assert {path.suffix for path in tmp_path.rglob("*") if path.is_file()} == {".json", ".safetensors"}
    messages = []
    resumed, resumed_history = train_heads(
        model, train, val, config, log=messages.append, checkpoint=tmp_path
    )
    assert messages[0] == f"resuming from step 3 ({tmp_path})"
    assert [h["step"] for h in resumed_history] == [h["step"] for h in history]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="heads.learning_rate"):
        train_heads(model, train, val, HeadsConfig(max_steps=6, batch_size=4), checkpoint=tmp_path)

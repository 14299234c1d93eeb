"""ReplayDrafter: a hint is drafted as a chain merged into the inner drafter's tree while the
committed tokens agree with it, dropped at the first disagreement, guessed ahead for asynchronous
speculation, and the inner drafter's verdicts are rewritten for its own tree."""

import torch

from actors.drafters.base import Drafter
from actors.drafters.ngram import NgramDrafter
from actors.drafters.replay import ReplayDrafter, merge_chain
from actors.drafters.worker import DrafterWorker
from actors.messages import DraftBudget, DraftCall, DraftTree, Verdict

FREE = DraftBudget(max_nodes=8, max_depth=8)  # node_cost 0: every confident node is admitted


def assert_valid(tree: DraftTree, budget: DraftBudget) -> None:
    """BFS order, parents first, distinct siblings, within budget, probabilities in (0, 1]."""
    parents, tokens = tree.parents.tolist(), tree.tokens.tolist()
    depths = tree.depths().tolist()
    assert len(tree) <= budget.max_nodes and depths == sorted(depths)
    assert all(d <= budget.max_depth for d in depths)
    assert len(set(zip(parents, tokens))) == len(tokens), "siblings share a token"
    assert all(-1 <= p < i for i, p in enumerate(parents))
    assert all(0 < p <= 1 for p in tree.draft_probs.tolist())


def paths(tree: DraftTree) -> set[tuple[int, ...]]:
    """Every root-to-node token path of ``tree``."""
    out: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        out.append((out[parent] if parent >= 0 else ()) + (token,))
    return set(out)


def node_index(tree: DraftTree, path: tuple[int, ...]) -> int:
    nodes: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        nodes.append((nodes[parent] if parent >= 0 else ()) + (token,))
    return nodes.index(path)


class FixedDrafter(Drafter):
    """Proposes the same two-branch tree every step; records what it is told."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.adds: list[tuple[int, list[int]]] = []

    def add(self, seq_id, prompt_ids):
        self.adds.append((seq_id, list(prompt_ids)))

    def release(self, seq_id):
        pass

    def commit(self, verdicts):
        self.verdicts += verdicts

    def propose(self, seq_ids, budgets, assume=None):
        # root -> 50 (-> 51), root -> 60
        tree = DraftTree(
            0, torch.tensor([50, 60, 51]), torch.tensor([-1, -1, 0]), torch.tensor([0.5, 0.3, 0.5])
        )
        return [DraftTree(s, tree.tokens, tree.parents, tree.draft_probs) for s in seq_ids]


def test_merge_keeps_the_chain_and_fills_the_rest_with_the_inner_tree():
    inner = FixedDrafter().propose([0], [FREE])[0]
    merged = merge_chain(inner, [60, 61, 62], rate=0.9, budget=FREE)
    assert_valid(merged, FREE)
    assert paths(merged) == paths(inner) | {(60,), (60, 61), (60, 61, 62)}
    assert len(merged) == 5  # 60 is shared by the chain and the inner tree
    assert merged.likely_path() == [60, 61, 62]
    # a tight budget keeps the chain (confidence 0.9^d) before the branch off it (0.5 · 0.1)
    tight = DraftBudget(max_nodes=3, max_depth=8)
    assert paths(merge_chain(inner, [60, 61, 62], 0.9, tight)) == {(60,), (60, 61), (60, 61, 62)}


def test_a_hint_is_drafted_while_it_agrees_and_dropped_at_the_first_disagreement():
    prompt, hint = [1, 2, 3, 1, 2], [10, 11, 12, 13, 14]
    plain, replay = NgramDrafter(), ReplayDrafter(NgramDrafter())
    plain.add(0, prompt)
    replay.add(0, prompt, hint)
    tree = replay.propose([0], [FREE])[0]
    assert_valid(tree, FREE)
    assert tree.likely_path() == hint
    assert (3, 1, 2) in paths(tree)  # the n-gram drafter's lookup stays in the tree
    for drafter in (plain, replay):  # two hint tokens right, then the verifier samples 99
        drafter.propose([0], [FREE])
        drafter.commit([Verdict(0, [10, 11, 99], [], 0)])
    assert replay.live_hints() == 0
    after = replay.propose([0], [FREE])[0]
    expected = plain.propose([0], [FREE])[0]
    assert torch.equal(after.tokens, expected.tokens) and torch.equal(after.parents, expected.parents)


def test_a_hint_follows_commits_and_ends_with_itself():
    replay = ReplayDrafter(None)
    replay.add(7, [1, 2], [10, 11, 12, 13])
    replay.commit([Verdict(7, [10, 11], [0], 2)])
    assert replay.propose([7], [FREE])[0].tokens.tolist() == [12, 13]
    replay.commit([Verdict(7, [12, 13, 5], [0, 1], 2)])
    assert replay.live_hints() == 0 and len(replay.propose([7], [FREE])[0]) == 0
    assert replay.rate > 0.9  # four agreeing tokens, no disagreement


def test_drafting_ahead_guesses_the_hint_and_drafts_the_rest_of_it():
    replay = ReplayDrafter(NgramDrafter())
    replay.add(0, [1, 2, 3], [10, 11, 12, 13])
    ahead = replay.propose([0], [FREE], [[10]])[0]
    assert ahead.assumed == (10, 11) and ahead.likely_path() == [12, 13]
    wrong = replay.propose([0], [FREE], [[99]])[0]  # the hint would be dead: the inner drafter's tree
    assert not wrong.assumed or wrong.assumed[:1] == (99,)


def test_the_inner_drafter_is_told_about_its_own_tree():
    inner = FixedDrafter()
    replay = ReplayDrafter(inner)
    replay.add(0, [1], [60, 61, 62])
    tree = replay.propose([0], [FREE])[0]
    # the verifier accepted 60 and 61 of the merged tree and sampled 40
    accepted = [node_index(tree, (60,)), node_index(tree, (60, 61))]
    replay.commit([Verdict(0, [60, 61, 40], accepted, len(tree))])
    told = inner.verdicts[-1]
    assert told.tokens == [60, 61, 40]
    assert told.accepted_nodes == [1] and told.num_drafted == 3  # node 1 of its tree is 60


def test_the_worker_carries_hints_from_the_call_to_the_drafter():
    worker = DrafterWorker(NgramDrafter())
    reply = worker.draft(
        DraftCall(adds=[(3, [1, 2, 3])], hints={3: [20, 21, 22]}, proposals=[(3, FREE, None)])
    )
    assert reply.trees[0].likely_path() == [20, 21, 22]
    assert worker.info()["kind"] == "NgramDrafter"
    plain = worker.draft(DraftCall(adds=[(4, [1, 2, 3])], proposals=[(4, FREE, None)]))
    assert 20 not in plain.trees[0].tokens.tolist()

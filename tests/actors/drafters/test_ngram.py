"""NgramDrafter: valid trees within budget, prompt lookup, token recycling, learning, speed."""

import random

import pytest
import torch

from actors.drafters.ngram import NgramDrafter
from actors.messages import DraftBudget, DraftTree, Verdict


def assert_valid_tree(tree: DraftTree, budget: DraftBudget) -> None:
    """BFS order, parents before children, distinct siblings, within budget, sane confidences."""
    n = len(tree)
    assert tree.tokens.dtype == torch.long and tree.parents.dtype == torch.long
    assert tree.draft_probs.dtype == torch.float32
    assert tree.tokens.shape == tree.parents.shape == tree.draft_probs.shape == (n,)
    assert n <= budget.max_nodes
    parents, probs, tokens = tree.parents.tolist(), tree.path_confidences(), tree.tokens.tolist()
    depths = tree.depths().tolist()
    assert depths == sorted(depths), "not BFS order"
    assert all(d <= budget.max_depth for d in depths)
    siblings = set()
    for i, parent in enumerate(parents):
        assert -1 <= parent < i
        assert (parent, tokens[i]) not in siblings, "siblings share a token"
        siblings.add((parent, tokens[i]))
        assert 0 < probs[i] <= 1
        if parent >= 0:
            assert probs[i] <= probs[parent] + 1e-6, "path confidence grew along a path"


def recycling_verdict(seq_id: int, committed: list[int], table: dict[int, list[tuple[int, float]]]):
    """A verdict committing ``committed`` whose context rows carry ``table`` (token -> successors)."""
    k = max(len(successors) for successors in table.values())
    rows = [successors + [(0, 0.0)] * (k - len(successors)) for successors in table.values()]
    return Verdict(
        seq_id,
        tokens=committed,
        accepted_nodes=[],
        num_drafted=0,
        context_tokens=torch.tensor(list(table)),
        context_topk=torch.tensor([[t for t, _ in row] for row in rows]),
        context_topk_probs=torch.tensor([[p for _, p in row] for row in rows]),
    )


class CountingNgramDrafter(NgramDrafter):
    """Records how many history positions each lookup reads."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pointers_read: list[int] = []

    def _lookup_children(self, history, pointers, kind, n):
        self.pointers_read.append(len(pointers))
        return super()._lookup_children(history, pointers, kind, n)


def paths(tree: DraftTree) -> list[list[int]]:
    """Every root-to-node token path of the tree."""
    result: list[list[int]] = []
    for i, parent in enumerate(tree.parents.tolist()):
        result.append((result[parent] if parent >= 0 else []) + [int(tree.tokens[i])])
    return result


def test_budget_zero_gives_empty_tree():
    drafter = NgramDrafter()
    drafter.add(0, [1, 2, 3, 1, 2, 3, 1, 2])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=0, max_depth=4)])
    assert len(tree) == 0 and tree.seq_id == 0


def test_no_evidence_gives_empty_tree():
    drafter = NgramDrafter()
    drafter.add(0, [1, 2, 3, 4])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=4)])
    assert len(tree) == 0


def test_prompt_lookup_proposes_continuation_of_repeated_pattern():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(7, [5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3])
    (tree,) = drafter.propose([7], [DraftBudget(max_nodes=16, max_depth=4)])
    assert_valid_tree(tree, DraftBudget(16, 4))
    assert tree.seq_id == 7
    assert int(tree.tokens[0]) == 4 and int(tree.parents[0]) == -1
    assert [4, 5, 6, 7] in paths(tree)
    best_leaf = max(range(len(tree)), key=lambda i: (tree.depths()[i], tree.path_confidences()[i]))
    assert paths(tree)[best_leaf] == [4, 5, 6, 7]


def test_prompt_lookup_branches_on_distinct_continuations_preferring_longer_match():
    drafter = NgramDrafter(threshold=0.0)
    # "1 2 3" was followed by 4 once; "2 3" also by 8, "3" also by 9: three branches at the root
    drafter.add(0, [1, 2, 3, 4, 0, 2, 3, 8, 0, 3, 9, 0, 1, 2, 3])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=1)])
    roots = dict(zip(tree.tokens.tolist(), tree.draft_probs.tolist(), strict=True))
    assert set(roots) == {4, 8, 9}
    assert int(tree.tokens[0]) == 4  # the 3-gram match
    assert roots[4] >= roots[8] >= roots[9]


def test_recycling_learns_adjacency_from_verdict_and_uses_it():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(0, [100, 101])
    drafter.add(1, [200])
    table = {10: [(11, 0.9), (12, 0.05)], 11: [(13, 0.8)]}
    drafter.commit([recycling_verdict(0, [10], table)])
    # the table is shared: sequence 1 uses what sequence 0's verdict taught
    drafter.commit([Verdict(1, tokens=[10], accepted_nodes=[], num_drafted=0)])
    for seq_id in (0, 1):
        (tree,) = drafter.propose([seq_id], [DraftBudget(max_nodes=8, max_depth=3)])
        assert_valid_tree(tree, DraftBudget(8, 3))
        assert paths(tree)[0] == [11]
        assert [11, 13] in paths(tree) and [12] in paths(tree)


def test_recycling_overwrites_with_newest_topk():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(0, [100])
    drafter.commit([recycling_verdict(0, [50], {10: [(11, 0.9)]})])
    drafter.commit([recycling_verdict(0, [10], {10: [(14, 0.7), (15, 0.2)]})])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=1)])
    assert sorted(tree.tokens.tolist()) == [14, 15]


def test_lookup_and_recycling_merge_into_one_tree():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(0, [1, 2, 3, 4, 9])
    drafter.commit([recycling_verdict(0, [1, 2, 3], {3: [(4, 0.5), (6, 0.3)]})])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=2)])
    assert_valid_tree(tree, DraftBudget(8, 2))
    roots = dict(zip(tree.tokens.tolist(), tree.draft_probs.tolist(), strict=True))
    assert 4 in roots and 6 in roots
    assert roots[4] > roots[6]  # both sources agree on 4
    assert [4, 9] in paths(tree)


def test_trees_are_valid_across_random_histories_and_budgets():
    rng = random.Random(0)
    drafter = NgramDrafter(threshold=0.0)
    for seq_id in range(20):
        history = [rng.randrange(12) for _ in range(rng.randrange(1, 200))]
        drafter.add(seq_id, history)
        table = {t: [(rng.randrange(12), rng.random() / 2) for _ in range(4)] for t in range(12)}
        table = {t: list(dict(successors).items()) for t, successors in table.items()}
        drafter.commit([recycling_verdict(seq_id, [rng.randrange(12)], table)])
        budget = DraftBudget(max_nodes=rng.randrange(1, 40), max_depth=rng.randrange(1, 9))
        (tree,) = drafter.propose([seq_id], [budget])
        assert_valid_tree(tree, budget)
        assert len(tree) > 0  # threshold 0 and a full table: something is always drafted


def test_threshold_prunes_unlikely_nodes():
    table = {10: [(11, 0.9), (12, 0.05)], 11: [(13, 0.3)]}
    sizes = {}
    for threshold in (0.0, 0.1, 0.5):
        drafter = NgramDrafter(threshold=threshold, recycle_prior=1.0)
        drafter.add(0, [100])
        drafter.commit([recycling_verdict(0, [10], table)])
        (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=3)])
        assert all(p >= threshold for p in tree.path_confidences())
        sizes[threshold] = len(tree)
    assert sizes == {0.0: 3, 0.1: 2, 0.5: 1}


def test_draft_probs_are_edge_confidences_and_paths_multiply_them():
    """The tree carries each edge's confidence; the budget reads path_confidences() (their product
    from the root), which must be the confidence the best-first search ranked the node by."""
    table = {10: [(11, 0.9), (12, 0.05)], 11: [(13, 0.3)]}
    drafter = NgramDrafter(threshold=0.0, recycle_prior=1.0)
    drafter.add(0, [100])
    drafter.commit([recycling_verdict(0, [10], table)])
    (tree,) = drafter.propose([0], [DraftBudget(max_nodes=8, max_depth=3)])
    assert tree.tokens.tolist() == [11, 12, 13]
    assert tree.draft_probs.tolist() == pytest.approx([0.9, 0.05, 0.3])
    assert tree.path_confidences() == pytest.approx([0.9, 0.05, 0.27])


def test_acceptance_feedback_moves_lookup_confidence():
    budget = DraftBudget(max_nodes=1, max_depth=1)

    def confidence_after(accept: bool, steps: int) -> float:
        drafter = NgramDrafter(threshold=0.0, lookup_prior=0.6)
        for seq_id in range(steps + 1):  # a fresh sequence each step; the estimate is drafter-wide
            drafter.add(seq_id, [1, 2, 3, 1, 2, 3, 1, 2])
            (tree,) = drafter.propose([seq_id], [budget])
            assert tree.tokens.tolist() == [3]
            if seq_id == steps:
                return float(tree.draft_probs[0])
            committed, accepted = ([3, 1], [0]) if accept else ([5], [])
            drafter.commit([Verdict(seq_id, tokens=committed, accepted_nodes=accepted, num_drafted=1)])
            drafter.release(seq_id)

    assert confidence_after(accept=True, steps=0) == pytest.approx(0.6)
    assert confidence_after(accept=False, steps=30) < 0.3
    assert confidence_after(accept=True, steps=30) > 0.9


def test_commit_extends_each_sequence_independently():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(0, [1, 2, 3])
    drafter.add(1, [7, 8, 9])
    drafter.commit(
        [
            Verdict(0, tokens=[4, 1, 2], accepted_nodes=[], num_drafted=0),
            Verdict(1, tokens=[6, 7, 8], accepted_nodes=[], num_drafted=0),
        ]
    )
    budget = DraftBudget(max_nodes=4, max_depth=4)
    tree0, tree1 = drafter.propose([0, 1], [budget, budget])
    assert (tree0.seq_id, tree1.seq_id) == (0, 1)
    assert paths(tree0)[-1] == [3, 4, 1, 2]
    assert paths(tree1)[-1] == [9, 6, 7, 8]


def test_release_forgets_sequence():
    drafter = NgramDrafter(threshold=0.0)
    drafter.add(3, [1, 2, 1, 2, 1])
    drafter.release(3)
    with pytest.raises(KeyError):
        drafter.propose([3], [DraftBudget(4, 4)])
    with pytest.raises(KeyError):
        drafter.commit([Verdict(3, tokens=[1], accepted_nodes=[], num_drafted=0)])
    drafter.add(3, [5, 6, 7])  # the same id starts fresh: the old pattern is gone
    (tree,) = drafter.propose([3], [DraftBudget(4, 4)])
    assert len(tree) == 0


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="max_ngram"):
        NgramDrafter(max_ngram=0)
    with pytest.raises(ValueError, match="threshold"):
        NgramDrafter(threshold=1.5)
    with pytest.raises(ValueError, match="budgets"):
        NgramDrafter().propose([0], [])


def test_lookup_work_is_bounded_however_long_the_history():
    """Each lookup reads at most ``max_matches`` earlier occurrences, so drafting a tree costs
    the same on a history of 1,200 tokens and of 12,000 (the drafter runs every verifier step).
    Time per tree is a benchmark's figure: ``tandem bench`` measures the drafter in the step."""
    rng = random.Random(1)
    block = [rng.randrange(4) for _ in range(30)]  # repeated: every n-gram recurs in every block
    budget = DraftBudget(max_nodes=32, max_depth=8)
    trees, work = [], []
    for repeats in (40, 400):
        drafter = CountingNgramDrafter(threshold=0.0, max_matches=8)
        drafter.add(0, block * repeats)
        (tree,) = drafter.propose([0], [budget])
        assert len(tree) == 32 and len(set(tree.parents.tolist())) < 32  # full, not a chain
        assert max(drafter.pointers_read) == 8
        trees.append((tree.tokens.tolist(), tree.parents.tolist()))
        work.append(sum(drafter.pointers_read))
    assert trees[0] == trees[1] and work[0] == work[1]

"""The drafter interface: propose token trees, learn from the verifier's verdicts."""

from __future__ import annotations

from abc import ABC, abstractmethod

from actors.messages import DraftBudget, DraftTree, Verdict


class Drafter(ABC):
    """Proposes draft trees for a set of live sequences.

    A drafter keeps its own per-sequence state (history, KV cache). The engine calls
    ``add`` once per sequence with the prompt, then repeats ``propose`` → (verify) →
    ``commit`` until it calls ``release``. Draft hints (``SamplingParams.draft_hint``) need
    nothing here: :class:`~actors.drafters.worker.DrafterWorker` drives every drafter through a
    :class:`~actors.drafters.replay.ReplayDrafter`, which merges them into this drafter's trees.
    """

    #: how many of the verifier's top next tokens per step input this drafter wants in
    #: each Verdict (token recycling); 0 = none.
    wants_topk: int = 0
    #: whether each Verdict should carry the verifier's hidden state at its last position
    wants_hidden: bool = False

    @abstractmethod
    def add(self, seq_id: int, prompt_ids: list[int]) -> None:
        """Start tracking a sequence whose committed tokens so far are ``prompt_ids``."""

    @abstractmethod
    def propose(
        self, seq_ids: list[int], budgets: list[DraftBudget], assume: list[list[int] | None] | None = None
    ) -> list[DraftTree]:
        """One tree per sequence, each within its budget (``max_nodes == 0`` → empty tree).

        ``assume[i]``, when given and not None, asks for a tree drafted as if those tokens and
        then the drafter's own guess at the next one were committed (asynchronous
        speculation); the tree records them in :attr:`DraftTree.assumed` and the drafter's
        committed state is left unchanged. A drafter that cannot do this returns trees without
        ``assumed``, which the engine never mistakes for a correct guess.
        """

    @abstractmethod
    def commit(self, verdicts: list[Verdict]) -> None:
        """Append each verdict's tokens to its sequence's committed history."""

    @abstractmethod
    def release(self, seq_id: int) -> None:
        """Forget a finished sequence and free what it held."""

    def load_weights(self, state_dict: dict) -> None:
        """Replace the drafter's weights in place (hot swap). Drafters without weights refuse."""
        raise ValueError(f"{type(self).__name__} has no weights to load")

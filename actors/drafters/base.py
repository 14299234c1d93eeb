"""The drafter interface: propose token trees, learn from the verifier's verdicts."""

from __future__ import annotations

from abc import ABC, abstractmethod

from actors.messages import DraftBudget, DraftTree, Verdict


class Drafter(ABC):
    """Proposes draft trees for a set of live sequences.

    A drafter keeps its own per-sequence state (history, KV cache). The engine calls
    ``add`` once per sequence with the prompt, then repeats ``propose`` → (verify) →
    ``commit`` until it calls ``release``.
    """

    #: how many of the verifier's top next tokens per step input this drafter wants in
    #: each Verdict (token recycling); 0 = none.
    wants_topk: int = 0

    @abstractmethod
    def add(self, seq_id: int, prompt_ids: list[int]) -> None:
        """Start tracking a sequence whose committed tokens so far are ``prompt_ids``."""

    @abstractmethod
    def propose(self, seq_ids: list[int], budgets: list[DraftBudget]) -> list[DraftTree]:
        """One tree per sequence, each within its budget (``max_nodes == 0`` → empty tree)."""

    @abstractmethod
    def commit(self, verdicts: list[Verdict]) -> None:
        """Append each verdict's tokens to its sequence's committed history."""

    @abstractmethod
    def release(self, seq_id: int) -> None:
        """Forget a finished sequence and free what it held."""

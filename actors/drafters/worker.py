"""The drafter side of the engine's one-call-per-step protocol (:class:`DraftCall`).

A :class:`DrafterWorker` wraps any :class:`Drafter`; it is what runs inside a drafter actor or
Serve replica. It never fails a call for a sequence it does not know (a restarted actor, another
replica): it answers with an empty tree and names the sequence, and the engine re-seeds it. Every
drafter is driven through a :class:`~actors.drafters.replay.ReplayDrafter`, so the hints a call
carries (:attr:`DraftCall.hints`) are drafted whatever the drafter; without hints it changes nothing.
"""

from __future__ import annotations

from actors.drafters.base import Drafter
from actors.drafters.replay import ReplayDrafter
from actors.messages import DraftCall, DraftReply, DraftTree


class DrafterWorker:
    """Applies :class:`DraftCall` messages to a drafter.

    Args:
        drafter: the drafter to drive.
    """

    def __init__(self, drafter: Drafter):
        self.drafter = drafter.inner if isinstance(drafter, ReplayDrafter) else drafter
        self.replay = drafter if isinstance(drafter, ReplayDrafter) else ReplayDrafter(drafter)
        self.known: set[int] = set()

    @property
    def wants_topk(self) -> int:
        return self.replay.wants_topk

    def info(self) -> dict:
        """What the engine needs to know about this drafter."""
        return {
            "wants_topk": self.replay.wants_topk,
            "wants_hidden": self.replay.wants_hidden,
            "kind": type(self.drafter).__name__ if self.drafter is not None else "ReplayDrafter",
        }

    def load_weights(self, state_dict: dict) -> int:
        """Hot-swap the drafter's weights. Every sequence is forgotten, so the engines re-seed
        them (their next call names them unknown) and drafting resumes on the new weights;
        requests never fail. Returns how many sequences will be re-seeded."""
        self.replay.load_weights(state_dict)
        dropped = len(self.known)
        for seq_id in list(self.known):
            self.replay.release(seq_id)
        self.known.clear()
        return dropped

    def draft(self, call: DraftCall) -> DraftReply:
        """Apply ``call`` (releases, adds, verdicts, then proposals) and answer it."""
        drafter = self.replay
        for seq_id in call.releases:
            if seq_id in self.known:
                drafter.release(seq_id)
                self.known.discard(seq_id)
        for seq_id, tokens in call.adds:
            if seq_id in self.known:
                drafter.release(seq_id)
            drafter.add(seq_id, tokens, call.hints.get(seq_id))
            self.known.add(seq_id)
        unknown = sorted({v.seq_id for v in call.verdicts} - self.known)
        known_verdicts = [v for v in call.verdicts if v.seq_id in self.known]
        if known_verdicts:
            drafter.commit(known_verdicts)
        proposals = [p for p in call.proposals if p[0] in self.known]
        unknown += sorted({p[0] for p in call.proposals} - self.known - set(unknown))
        trees = {}
        if proposals:
            seq_ids, budgets, assume = (list(column) for column in zip(*proposals))
            trees = {t.seq_id: t for t in drafter.propose(seq_ids, budgets, assume)}
        return DraftReply([trees.get(p[0]) or DraftTree.empty(p[0]) for p in call.proposals], unknown)

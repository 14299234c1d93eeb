"""How the engine reaches its drafter: in this process, or across an actor boundary.

The engine speaks :class:`DraftCall` / :class:`DraftReply` to a link. A remote link (built in
``pipelines/``, where Ray lives) raises :class:`DrafterUnavailable` when the drafter is dead,
restarting or too slow; the engine then decodes without drafts, which stays lossless, and
re-seeds the drafter once it answers again.
"""

from __future__ import annotations

from typing import Protocol

from actors.drafters.worker import DrafterWorker
from actors.messages import DraftCall, DraftReply


class DrafterUnavailable(RuntimeError):
    """The drafter did not answer; the step goes on without drafts."""


class DrafterLink(Protocol):
    async def info(self) -> dict:
        """``DrafterWorker.info()`` of the drafter behind the link."""

    async def draft(self, call: DraftCall) -> DraftReply:
        """Apply ``call`` on the drafter; raise :class:`DrafterUnavailable` when it cannot."""


class LocalDrafter:
    """A drafter in the engine's own process (errors are bugs and propagate)."""

    def __init__(self, worker: DrafterWorker):
        self.worker = worker

    async def info(self) -> dict:
        return self.worker.info()

    async def draft(self, call: DraftCall) -> DraftReply:
        return self.worker.draft(call)

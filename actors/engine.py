"""The speculative engine: continuous batching of requests over one verifier and one drafter.

Each step proposes a tree per running request, verifies all of them in one forward pass and
commits the verdicts; the event loop serves streams and new requests between steps. The forward
runs on the loop's own thread: from a worker thread the same forward took twice as long on the
2-core CPU of docs/benchmarks.md (in-process engine, 6 HumanEval prompts: 108-114 ms per step
inline, 223-235 ms in a ``ThreadPoolExecutor``). Requests join and leave between steps. With
``async_speculation`` the drafter drafts step r+1 while the verifier checks step r, assuming the
drafter's likeliest outcome of step r; a tree whose assumption the verdict contradicts is thrown
away and the sequence is drafted again. The drafter may live in this process or behind a
:class:`~actors.drafters.link.DrafterLink` (another actor, another node); when it is unreachable
the engine decodes without drafts until it answers again. Output never depends on the drafter:
it is the verifier's, token for token.

For RL the engine also returns the log-prob of every committed token (``SamplingParams.logprobs``),
swaps the verifier's weights between rollouts (:meth:`Engine.load_weights`, stamping each result
with its ``policy_version``) and scores given completions teacher-forced (:meth:`Engine.score`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator

from actors.budget import BudgetController
from actors.drafters.base import Drafter
from actors.drafters.factory import build_drafter
from actors.drafters.link import DrafterLink, DrafterUnavailable, LocalDrafter
from actors.drafters.worker import DrafterWorker
from actors.engine_config import EngineConfig, eos_token_ids, resolve_device, validate
from actors.messages import DraftBudget, DraftCall, DraftTree, SamplingParams, Verdict
from actors.models import LoadedModel, encode_chat, load_model
from actors.requests import GenerationResult, GenerationStats, Request, RequestUpdate, check_room
from actors.scoring import score_completions
from actors.verifiers.verifier import Verifier
from actors.weights import load_in_place

__all__ = ["Engine", "EngineConfig", "GenerationResult", "GenerationStats", "RequestUpdate"]

log = logging.getLogger(__name__)


class Engine:
    """Speculative generation over one verifier (in this process) and one drafter.

    Args:
        config: what to build.
        loaded: an already loaded verifier (tests, tools); default: load ``config.model``.
        drafter: a :class:`Drafter` object, or a link to a remote one, in place of
            ``config.drafter``.
    """

    def __init__(
        self,
        config: EngineConfig,
        loaded: LoadedModel | None = None,
        drafter: Drafter | DrafterLink | None = None,
    ):
        validate(config)
        self.config = config
        self.device = resolve_device(config.device)
        loaded = loaded or load_model(config.model, config.dtype)
        self.model = loaded.model.to(self.device)
        self.tokenizer = loaded.tokenizer
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.verifier = Verifier(
            self.model, config.max_batch_size, config.max_model_len, config.attention, config.decoder
        )
        if drafter is None:
            drafter = build_drafter(config, self.model, self.device)
        self.drafter_model = getattr(drafter, "assistant_model", None)
        self.link: DrafterLink | None = drafter
        self._wants_topk: int | None = None
        self._wants_hidden = False
        self.async_speculation = config.async_speculation
        if isinstance(drafter, Drafter):
            self.link, self._wants_topk = LocalDrafter(DrafterWorker(drafter)), drafter.wants_topk
            self._wants_hidden = drafter.wants_hidden
            self.async_speculation = bool(config.async_speculation)
        elif self.async_speculation is None:
            self.async_speculation = True
        self.budget = BudgetController(
            config.max_draft_nodes if self.link else 0,
            config.max_draft_depth,
            config.adaptive_budget,
            self.verifier.runner.rows_computed,
        )
        #: steps, speculated / speculation_hits (trees drafted ahead / used), drafter_failures,
        #: aborted (requests stopped by their caller)
        self.counters: Counter[str] = Counter()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}
        self._ids = iter(range(random.getrandbits(20) << 32, 1 << 62))  # unique across engines
        self._task: asyncio.Task | None = None
        self._last_tokens: dict[int, list[int]] = {}  # each running sequence's latest verdict
        self._drafter_known: set[int] = set()
        self._unsent_releases: list[int] = []
        self._unsent_verdicts: list[Verdict] = []
        self._drafter_down_until = 0.0
        #: version of the verifier weights, set by :meth:`load_weights`; stamped on every result
        self.policy_version = 0

    # -- requests -------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def encode(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of a prompt, wrapped in the model's chat template when ``chat``."""
        if not text:
            raise ValueError("prompt is empty")
        if chat:
            return self.encode_chat([{"role": "user", "content": text}])
        return self.tokenizer.encode(text)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation in the model's chat template, ready for the reply."""
        return encode_chat(self.tokenizer, messages)

    def check_prompt(self, prompt_ids: list[int]) -> None:
        """Raise ValueError unless the prompt fits with room to generate."""
        if not prompt_ids:
            raise ValueError("prompt is empty")
        room = self.config.max_model_len - self.config.max_draft_nodes - 1
        if len(prompt_ids) >= room:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; max_model_len={self.config.max_model_len} "
                f"leaves room for at most {room - 1}"
            )

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError unless the request can start: :meth:`check_prompt`, and with
        ``params.require_full_length`` room for all of it (:func:`~actors.requests.check_room`)."""
        self.check_prompt(prompt_ids)
        if params.require_full_length:
            check_room(len(prompt_ids), params.max_new_tokens, self.config)

    def load_weights(self, state_dict: dict, version: int) -> None:
        """Copy new verifier weights in place (:func:`actors.weights.load_in_place`: a partial
        state dict with the model's own names and shapes) and set :attr:`policy_version`, which
        every later result carries. Refused (ValueError, nothing changed) while any request runs
        or waits, and for a bad key or shape, named."""
        if self._running or self._waiting:
            raise ValueError(
                f"load_weights refused: {len(self._running)} request(s) running and "
                f"{len(self._waiting)} waiting; swap weights when the engine is idle"
            )
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"version must be an int, got {version!r}")
        load_in_place(self.model, state_dict)
        self.policy_version = version

    def score(
        self, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0
    ) -> list[list[float]]:
        """Teacher-forced log-probs of each completion token under the current weights
        (:func:`actors.scoring.score_completions`): they equal what ``SamplingParams.logprobs``
        returns to float32 rounding. Not through the KV cache: running requests are untouched
        (their steps wait while it runs on the loop's thread)."""
        return score_completions(self.model, prompts, completions, temperature)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[GenerationResult]:
        """Generate a continuation for every prompt (token ids); results in prompt order.

        Blocking, for use outside an event loop; inside one, await :meth:`generate_async`.
        """
        return asyncio.run(self.generate_async(prompts, params))

    async def generate_async(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[GenerationResult]:
        """:meth:`generate` for callers already in an event loop (actors, servers)."""
        params = params or SamplingParams()
        per_request = params if isinstance(params, list) else [params] * len(prompts)
        if len(per_request) != len(prompts):
            raise ValueError("give one SamplingParams per prompt, or one for all")
        for prompt_ids, request_params in zip(prompts, per_request):
            self.check_request(prompt_ids, request_params)
        requests = [self.submit(ids, p) for ids, p in zip(prompts, per_request)]
        while not all(r.done for r in requests):
            await asyncio.wait([self._task])  # the loop may serve others after ours: never cancel it
        failed = next((r for r in requests if r.error), None)
        if failed:
            raise RuntimeError(f"generation failed: {failed.error}")
        return [r.result() for r in requests]

    def submit(self, prompt_ids: list[int], params: SamplingParams, stream: bool = False) -> Request:
        """Queue a request (call from the event loop that runs the engine); raises ValueError
        when it cannot run (:meth:`check_request`)."""
        self.check_request(prompt_ids, params)
        request = Request(next(self._ids), list(prompt_ids), params, policy_version=self.policy_version)
        if stream:
            request.updates = asyncio.Queue()
        self._waiting.append(request)
        if self._task is None or self._task.done():
            # A fresh context: the loop serves every request, so it must not inherit the one that
            # started it (Ray Serve cancels the calls made in a request's context when its client
            # leaves, and the loop's drafter calls would be among them).
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), context=contextvars.Context())
        return request

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestUpdate]:
        """Yield a request's updates as steps commit tokens; the last one has ``finish_reason``.
        Closing the iterator early (a client went away) aborts the request."""
        request = self.submit(prompt_ids, params, stream=True)
        try:
            while True:
                update = await request.updates.get()
                yield update
                if update.finish_reason:
                    return
        finally:
            if not request.done:
                self.abort(request.seq_id)

    def abort(self, seq_id: int) -> None:
        """Stop a request; its KV slot is freed before the next step."""
        for request in (*self._waiting, *self._running.values()):
            if request.seq_id == seq_id:
                request.cancelled = True

    # -- the step loop --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except BaseException as exc:  # cancelled or shut down: no request may wait on a dead loop
            self._fail_running(exc)
            for request in self._waiting:
                request.error = "the engine loop stopped"
                request.finish("error")
                request.publish()
            self._waiting.clear()
            raise

    async def _loop(self) -> None:
        """Steps until no request is left."""
        prefetched: dict[int, DraftTree] = {}
        while True:
            await asyncio.sleep(0)  # the step below holds the thread: let streams and submits run
            self._retire_cancelled()
            self._admit()
            if not self._running:
                return
            try:
                prefetched = await self._step(prefetched)
            except Exception as exc:
                log.exception("engine step failed; failing its %d requests", len(self._running))
                self._fail_running(exc)
                prefetched = {}

    def _fail_running(self, exc: BaseException) -> None:
        for request in list(self._running.values()):
            request.error = f"{type(exc).__name__}: {exc}"
            self._finish(request, "error")

    def _admit(self) -> None:
        while self._waiting and self.verifier.free_slots:
            request = self._waiting.popleft()
            self.verifier.add(request.seq_id, request.prompt_ids, request.params)
            request.start()
            self._running[request.seq_id] = request

    def _retire_cancelled(self) -> None:
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.finish("abort")
            request.publish()
            self.counters["aborted"] += 1
        for request in [r for r in self._running.values() if r.cancelled]:
            self._finish(request, "abort")
            self.counters["aborted"] += 1

    def _finish(self, request: Request, reason: str) -> None:
        self.verifier.release(request.seq_id)
        del self._running[request.seq_id]
        self._last_tokens.pop(request.seq_id, None)
        if request.seq_id in self._drafter_known:
            self._drafter_known.discard(request.seq_id)
            self._unsent_releases.append(request.seq_id)
        request.finish(reason)
        request.publish()

    async def _step(self, prefetched: dict[int, DraftTree]) -> dict[int, DraftTree]:
        """One propose → verify → commit; returns the trees drafted ahead for the next step."""
        seq_ids = self._step_sequences()
        budget = self.budget.plan(len(seq_ids))
        speculate = budget.max_nodes > 0 and await self._drafter_ready()
        trees = await self._trees(seq_ids, budget, prefetched) if speculate else {}
        trees = self.budget.trim([trees.get(s) or DraftTree.empty(s) for s in seq_ids])
        prefill = self._prefilling(seq_ids[0])
        topk = self._wants_topk if speculate else 0
        ahead = None
        if speculate and self.async_speculation:
            ahead = asyncio.ensure_future(self._draft(self._guesses(trees, budget)))
            await asyncio.sleep(0)  # a remote drafter gets its call before the verifier starts
        start = time.perf_counter()
        verdicts = self.verifier.verify(trees, topk, hidden=self._wants_hidden and speculate)
        if not prefill:  # a prompt's prefill would skew the decode cost fit
            padded = len(trees) * (1 + max(len(t) for t in trees))  # what the verifier computes
            self.budget.observe(padded, time.perf_counter() - start)
        if speculate:
            self.budget.observe_acceptance(trees, sum(len(v.accepted_nodes) for v in verdicts))
        drafted_ahead = await ahead if ahead else []
        self.counters["steps"] += 1
        self.counters["speculated"] += sum(1 for t in drafted_ahead if t.assumed)
        if self.link:
            self._unsent_verdicts += verdicts
        for verdict in verdicts:
            self._commit(self._running[verdict.seq_id], verdict)
        # Sequences that sat out a prefill step keep the trees drafted ahead for them.
        stepped = set(seq_ids)
        waiting = {s: t for s, t in prefetched.items() if s not in stepped and s in self._running}
        return waiting | {t.seq_id: t for t in drafted_ahead if t.assumed}

    def _step_sequences(self) -> list[int]:
        """The sequences of the next step: those with a prompt to prefill, alone, else all. The
        verifier pads a step to its longest input, so a prompt in a decoding batch would make
        every sequence pay for its length."""
        prefilling = [s for s in self._running if self._prefilling(s)]
        return prefilling or list(self._running)

    def _prefilling(self, seq_id: int) -> bool:
        return len(self.verifier.sequences[seq_id].pending) > 1

    def _commit(self, request: Request, verdict: Verdict) -> None:
        request.extend(verdict, self.eos_ids, self.tokenizer)
        self._last_tokens[request.seq_id] = verdict.tokens
        if request.done or self._out_of_room(request):
            self._finish(request, "length")
        else:
            request.publish()

    def _guesses(self, trees: list[DraftTree], budget: DraftBudget) -> list[tuple]:
        """Proposals for the next step, each assuming its tree's likeliest outcome, for the
        sequences with room for two more steps."""
        room = 2 * (self.config.max_draft_nodes + 1)
        return [
            (t.seq_id, budget, t.likely_path())
            for t in trees
            if self.verifier.context_len(t.seq_id) + room <= self.config.max_model_len
        ]

    async def _trees(
        self, seq_ids: list[int], budget: DraftBudget, prefetched: dict[int, DraftTree]
    ) -> dict[int, DraftTree]:
        """This step's trees: those drafted ahead whose assumption came true, the rest drafted now."""
        trees, missing = {}, []
        for seq_id in seq_ids:
            tree = prefetched.get(seq_id)
            if tree is not None and list(tree.assumed) == self._last_tokens.get(seq_id):
                trees[seq_id] = tree
                self.counters["speculation_hits"] += 1
            else:
                missing.append(seq_id)
        if missing:
            trees |= {t.seq_id: t for t in await self._draft([(s, budget, None) for s in missing])}
        return trees

    async def _drafter_ready(self) -> bool:
        if self.link is None or time.monotonic() < self._drafter_down_until:
            return False
        if self._wants_topk is None:
            try:
                info = await self.link.info()
                self._wants_topk, self._wants_hidden = int(info["wants_topk"]), bool(info.get("wants_hidden"))
            except DrafterUnavailable as exc:
                return self._drafter_failed(exc)
        return True

    async def _draft(self, proposals: list[tuple]) -> list[DraftTree]:
        """Send the drafter everything it has not seen yet plus ``proposals``; its trees."""
        adds = [
            (s, r.prompt_ids + r.token_ids) for s, r in self._running.items() if s not in self._drafter_known
        ]
        added = {s for s, _ in adds}
        hints = {s: hint for s in added if (hint := self._hint_ahead(self._running[s]))}
        call = DraftCall(
            adds=adds,
            releases=self._unsent_releases,
            verdicts=[v for v in self._unsent_verdicts if v.seq_id not in added],
            proposals=proposals,
            hints=hints,
        )
        self._unsent_releases, self._unsent_verdicts = [], []
        self._drafter_known |= added
        try:
            reply = await self.link.draft(call)
        except DrafterUnavailable as exc:
            return self._drafter_failed(exc) or []
        self._drafter_known -= set(reply.unknown)
        return reply.trees

    @staticmethod
    def _hint_ahead(request: Request) -> list[int]:
        """The rest of the request's :attr:`~actors.messages.SamplingParams.draft_hint` after
        its tokens so far (empty once they disagree with it): what a (re-)seeded drafter may
        replay."""
        hint, done = request.params.draft_hint, request.token_ids
        if len(hint) <= len(done) or list(hint[: len(done)]) != done:
            return []
        return list(hint[len(done) :])

    def _drafter_failed(self, exc: Exception) -> bool:
        """Decode without drafts for a while; re-seed the drafter when it answers again."""
        log.warning(
            "drafter unavailable (%s); decoding without drafts for %.1fs", exc, self.config.drafter_retry_s
        )
        self.counters["drafter_failures"] += 1
        self._drafter_down_until = time.monotonic() + self.config.drafter_retry_s
        self._drafter_known.clear()
        self._unsent_releases, self._unsent_verdicts = [], []
        return False

    def _out_of_room(self, request: Request) -> bool:
        """True when one more step (a tree plus its token) could overflow the KV cache."""
        used = self.verifier.context_len(request.seq_id)
        return used + self.config.max_draft_nodes + 1 > self.config.max_model_len

"""Messages between drafters, verifiers and the engine: small frozen dataclasses of CPU data.

They are the only things that cross an actor boundary, so they hold token ids and
probabilities, never models or GPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_new_tokens: upper bound on generated tokens (> 0).
        temperature: 0 means greedy; otherwise the softmax temperature.
        top_p: nucleus mass kept (0 < top_p <= 1).
        top_k: keep the k most likely tokens; 0 keeps all.
        stop: strings that end generation; the stop string itself is not in the text, while the
            token ids end with the token that completed it
            (:meth:`~actors.requests.Request.extend`).
        ignore_eos: keep generating past the EOS token (benchmarks).
        seed: seeds this request's sampler, for reproducible sampling.
        logprobs: return the log-probability of every generated token
            (:attr:`~actors.requests.GenerationResult.logprobs`) under the distribution it was
            chosen from: ``log_softmax(logits / temperature)``, truncated to the top-k / top-p
            set when those are on (an RL job refuses them: they bias the importance ratio), and
            ``log_softmax(logits)`` for greedy decoding (temperature 0). Computed in float32 from
            the verifier's logits of the step that committed the token; costs nothing when off.
        require_full_length: refuse the request up front (``ValueError`` from
            :meth:`~actors.engine.Engine.check_request`) unless prompt + ``max_new_tokens`` + the
            largest draft tree + 1 fit in ``max_model_len``, so that it ends only with EOS, a stop
            string or ``max_new_tokens``, never cut short with ``length`` by a full KV cache (RL
            rollouts). Off by default: a server finishes such a request with ``length``.
        draft_hint: tokens the completion is expected to start with, e.g. the previous rollout
            of the same prompt with the same seed (RL replay). The drafter proposes them as a
            chain while the committed tokens agree with them, and forgets them at the first
            disagreement (:class:`~actors.drafters.replay.ReplayDrafter`). Never changes the
            output: a wrong hint only costs rejected drafts.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: bool = False
    require_full_length: bool = False
    draft_hint: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.draft_hint, tuple):
            object.__setattr__(self, "draft_hint", tuple(int(t) for t in self.draft_hint))
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class DraftBudget:
    """How large a tree the drafter may propose for one sequence this step.

    Attributes:
        max_nodes: tree size limit; 0 means "do not speculate".
        max_depth: longest root-to-leaf path.
        node_cost: what verifying one more node costs, as a fraction of what this sequence's
            share of a step costs without drafts (0: drafts are free, fill the budget).
        free_nodes: nodes that cost nothing (the verifier computes that many rows anyway: a CPU
            pads some row counts to cheaper ones); ``node_cost`` applies beyond them.
    """

    max_nodes: int
    max_depth: int
    node_cost: float = 0.0
    free_nodes: int = 0

    def admits(self, confidence: float, expected: float, nodes: int) -> bool:
        """Whether a node of path ``confidence`` raises expected tokens per unit of time, given a
        tree of ``nodes`` nodes so far that is expected to yield ``expected`` tokens (its
        accepted drafts plus the verifier's own token). Best-first drafters stop at the first
        node it refuses.

        Tokens per time go from ``expected / cost`` to ``(expected + confidence) / (cost +
        node_cost)`` with ``cost = 1 + node_cost · (nodes - free_nodes)``; that is a gain exactly
        when ``confidence · cost > node_cost · expected``. The first ``free_nodes`` cost nothing.
        """
        if nodes >= self.max_nodes:
            return False
        if nodes < self.free_nodes:
            return confidence > 0
        cost = 1 + self.node_cost * (nodes - self.free_nodes)
        return confidence * cost > self.node_cost * expected


@dataclass(frozen=True)
class DraftTree:
    """One sequence's proposal, in BFS order.

    Attributes:
        seq_id: the sequence it extends.
        tokens: ``[T]`` int64 drafted token ids.
        parents: ``[T]`` int64, ``parents[i] < i``; ``-1`` = child of the last committed token.
            Siblings hold distinct tokens.
        draft_probs: ``[T]`` float32, the drafter's confidence in each token given its
            path (its probability, or an estimate). Acceptance stays lossless whatever
            these hold; they drive the draft budget.
        assumed: tokens this tree takes as committed before its root without their being so
            yet (asynchronous speculation: a guess at the verdict of the step in flight). The
            tree is only usable when that verdict's tokens equal them; empty = none assumed.
    """

    seq_id: int
    tokens: torch.Tensor
    parents: torch.Tensor
    draft_probs: torch.Tensor
    assumed: tuple[int, ...] = ()

    @staticmethod
    def empty(seq_id: int, assumed: tuple[int, ...] = ()) -> DraftTree:
        return DraftTree(
            seq_id,
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.float32),
            assumed,
        )

    @staticmethod
    def chain(seq_id: int, tokens: list[int], probs: list[float] | None = None) -> DraftTree:
        """A linear draft: each token the child of the previous one."""
        n = len(tokens)
        return DraftTree(
            seq_id,
            torch.tensor(tokens, dtype=torch.long).view(n),
            torch.arange(-1, n - 1, dtype=torch.long),
            torch.tensor(probs if probs is not None else [1.0] * n, dtype=torch.float32).view(n),
        )

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def likely_path(self) -> list[int]:
        """The drafted tokens of the root-to-leaf path taken by following, from the root, the
        most confident child each time: the drafter's best guess at what will be accepted."""
        children: dict[int, list[int]] = {}
        for node, parent in enumerate(self.parents.tolist()):
            children.setdefault(parent, []).append(node)
        probs, tokens, path, node = self.draft_probs.tolist(), self.tokens.tolist(), [], -1
        while node in children:
            node = max(children[node], key=probs.__getitem__)
            path.append(tokens[node])
        return path

    def prefix(self, size: int) -> DraftTree:
        """The first ``size`` nodes: a tree again, since parents come before their children."""
        if size >= len(self):
            return self
        return DraftTree(
            self.seq_id, self.tokens[:size], self.parents[:size], self.draft_probs[:size], self.assumed
        )

    def path_confidences(self) -> list[float]:
        """Each node's path confidence (the product of ``draft_probs`` from the root to it): the
        drafter's estimate of the chance the node is accepted, so their sum is its estimate of
        the accepted tokens."""
        paths: list[float] = []
        for prob, parent in zip(self.draft_probs.tolist(), self.parents.tolist()):
            paths.append(prob * (paths[parent] if parent >= 0 else 1.0))
        return paths

    def depths(self) -> torch.Tensor:
        """``[T]`` int64 depth of each node; roots have depth 1."""
        depth = torch.zeros(len(self), dtype=torch.long)
        for i, parent in enumerate(self.parents.tolist()):
            depth[i] = 1 if parent < 0 else depth[parent] + 1
        return depth


@dataclass(frozen=True)
class Verdict:
    """What the verifier decided for one sequence's tree.

    Attributes:
        seq_id: the sequence.
        tokens: committed this step: the accepted drafted tokens, then one token sampled by
            the verifier (the correction at the first rejection, or the bonus after a fully
            accepted path). Always at least one token.
        accepted_nodes: tree indices of the accepted drafted tokens, root to leaf.
        num_drafted: size of the tree that was verified.
        context_tokens: ``[N]`` the step's input tokens from the last committed one on (that
            token, then the tree's nodes), present when the drafter asked for the verifier's top-k.
        context_topk: ``[N, k]`` the verifier's k most likely next tokens after each of them.
        context_topk_probs: ``[N, k]`` their probabilities.
        hidden: ``[H]`` float32, the verifier's last hidden state (after its final norm) at the
            position whose logits chose ``tokens[-1]``, present when the drafter asked for it
            (heads on the verifier's features: :mod:`actors.drafters.heads`).
        token_logprobs: one float per entry of ``tokens``: its log-probability under the
            distribution it was chosen from (see :attr:`SamplingParams.logprobs`), present
            when the sequence's request asked for log-probs.
    """

    seq_id: int
    tokens: list[int]
    accepted_nodes: list[int]
    num_drafted: int
    context_tokens: torch.Tensor | None = None
    context_topk: torch.Tensor | None = None
    context_topk_probs: torch.Tensor | None = field(default=None)
    hidden: torch.Tensor | None = None
    token_logprobs: list[float] | None = None

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)


@dataclass(frozen=True)
class DraftCall:
    """Everything the engine asks of a (possibly remote) drafter in one step, applied in order:
    forget ``releases``, start ``adds``, commit ``verdicts``, then propose one tree per entry of
    ``proposals``. One call per step keeps the drafter's state in step with the engine's even
    when calls cross a network.

    Attributes:
        adds: ``(seq_id, committed tokens)`` of sequences to start tracking (also used to
            re-seed a drafter that lost its state, e.g. after a restart).
        releases: sequences to forget.
        verdicts: the verdicts not yet committed to the drafter, oldest first.
        proposals: ``(seq_id, budget, assume)``: the tree wanted; ``assume`` not None asks for a
            tree drafted as if those tokens (then the drafter's own guess at the verifier's next
            token) were committed — see :attr:`DraftTree.assumed`.
        hints: ``seq_id -> tokens`` expected to follow the committed tokens of that sequence's
            entry in ``adds`` (:attr:`SamplingParams.draft_hint`, from where the sequence
            stands): drafted as a replay chain while they agree with what is committed.
    """

    adds: list[tuple[int, list[int]]] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    proposals: list[tuple[int, DraftBudget, list[int] | None]] = field(default_factory=list)
    hints: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftReply:
    """The drafter's answer to a :class:`DraftCall`.

    Attributes:
        trees: one per proposal, in order (an empty tree for an unknown sequence).
        unknown: sequences the call referred to that this drafter does not hold (it restarted,
            or is a different replica); the engine re-adds them with their committed tokens.
    """

    trees: list[DraftTree]
    unknown: list[int] = field(default_factory=list)

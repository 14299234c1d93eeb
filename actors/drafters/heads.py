"""Medusa-style heads: drafting from the verifier's own last hidden state, with no draft model.

Head ``k`` (``k = 1 .. K``) is a residual block ``h + SiLU(W_k h + b_k)`` whose output goes
through the verifier's LM head; on the hidden state that chose a sequence's last token it
predicts the token ``k`` places after that one (Cai et al. 2024, "Medusa"). Every verdict
carries that hidden state (:attr:`~actors.messages.Verdict.hidden`), so drafting a tree costs
one pass of ``K`` small blocks and one LM head product for ``K`` rows, where a draft model runs
a forward per tree level. The heads see no drafted token, so the tree is the product of the
heads' top-k lists, grown best-first by path probability within the draft budget.

A heads folder holds ``heads.json`` (``hidden_size``, ``num_heads``) and ``heads.safetensors``;
the LM head is the verifier's, so heads run in the verifier's process (``--drafter heads:PATH``).
``heads:distilled`` names the heads shipped for the embedded SmolLM2-135M verifier
(``pretrained/smollm2-135m-heads``, made by ``tandem distill-heads``: docs/distill.md).
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from actors.drafters.base import Drafter
from actors.drafters.model import draft_head
from actors.messages import DraftBudget, DraftTree, Verdict

CONFIG_FILE = "heads.json"
WEIGHTS_FILE = "heads.safetensors"
#: heads that ship with Tandem, by the name ``--drafter heads:NAME`` takes in place of a path
BUNDLED = {"distilled": Path(__file__).parent / "pretrained" / "smollm2-135m-heads"}

#: each head's top candidates for one sequence: (probabilities, tokens), each ``[K][branching]``.
Guesses = tuple[list[list[float]], list[list[int]]]


class MedusaHeads(nn.Module):
    """``num_heads`` residual blocks over a hidden state of ``hidden_size``; the blocks start as
    the identity (zero weights), so untrained head ``k`` repeats the verifier's own next-token
    guess."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_heads))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` → ``[..., K, H]``: each head's input to the LM head."""
        return torch.stack([self.head(k, hidden) for k in range(self.num_heads)], dim=-2)

    def head(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` → ``[..., H]``: head ``index`` (from 0)'s input to the LM head."""
        return hidden + nn.functional.silu(self.blocks[index](hidden))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"hidden_size": self.hidden_size, "num_heads": self.num_heads}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MedusaHeads:
        """Heads from ``folder``, or the bundled heads :data:`BUNDLED` names."""
        folder = Path(BUNDLED.get(str(folder), folder)).expanduser()
        if not (folder / CONFIG_FILE).is_file():
            raise ValueError(f"{folder} is not a heads folder: it has no {CONFIG_FILE}")
        config = json.loads((folder / CONFIG_FILE).read_text())
        heads = cls(int(config["hidden_size"]), int(config["num_heads"]))
        heads.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return heads


class HeadsDrafter(Drafter):
    """Drafts with :class:`MedusaHeads` on the verifier's hidden states.

    Args:
        heads: the trained heads, on the verifier's device and dtype.
        lm_head: the verifier's LM head.
        branching: candidates per head (its top-k).
        threshold: smallest path probability worth drafting.
        vocab: draft only among token ids ``0 .. vocab - 1`` (0 = every token).
    """

    wants_hidden = True

    def __init__(
        self,
        heads: MedusaHeads,
        lm_head: nn.Linear,
        branching: int = 4,
        threshold: float = 0.05,
        vocab: int = 0,
    ):
        self.heads = heads.eval()
        self.head = draft_head(lm_head, vocab)
        self.branching = branching
        self.threshold = threshold
        self.hidden: dict[int, torch.Tensor | None] = {}  # the state that chose the last token

    def add(self, seq_id: int, prompt_ids: list[int]) -> None:
        self.hidden[seq_id] = None  # known from the sequence's first verdict on

    def release(self, seq_id: int) -> None:
        self.hidden.pop(seq_id, None)

    def commit(self, verdicts: list[Verdict]) -> None:
        for verdict in verdicts:
            self.hidden[verdict.seq_id] = verdict.hidden

    def load_weights(self, state_dict: dict) -> None:
        self.heads.load_state_dict(state_dict)

    def propose(
        self, seq_ids: list[int], budgets: list[DraftBudget], assume: list[list[int] | None] | None = None
    ) -> list[DraftTree]:
        wanted = [s for s, b in zip(seq_ids, budgets) if b.max_nodes]
        guesses = self.guesses(wanted)
        return [
            self._tree(s, *guesses[s], b) if s in guesses else DraftTree.empty(s)
            for s, b in zip(seq_ids, budgets)
        ]

    @torch.inference_mode()
    def guesses(self, seq_ids: list[int]) -> dict[int, Guesses]:
        """Each head's top ``branching`` (probabilities, tokens), by sequence, for the sequences
        whose last verdict carried a hidden state; one batched pass for all of them."""
        ready = [s for s in seq_ids if self.hidden.get(s) is not None]
        if not ready:
            return {}
        param = next(self.heads.parameters())
        hidden = torch.stack([self.hidden[s] for s in ready]).to(param.device, param.dtype)
        probs = self.head(self.heads(hidden)).float().softmax(dim=-1)  # [N, K, V]
        top = torch.topk(probs, self.branching, dim=-1)
        values, tokens = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return {s: (values[row], tokens[row]) for row, s in enumerate(ready)}

    def _tree(self, seq_id: int, values: list[list[float]], tokens: list[list[int]], budget: DraftBudget):
        """Best-first over the product of the heads' candidates: node at depth ``d`` takes head
        ``d``'s candidates as children. Parents pop before their children (a child's path
        probability is at most its parent's, and ties pop in push order), so BFS indices hold."""
        depth_limit = min(len(values), budget.max_depth)
        # (-path probability, push order, parent node, depth index, token, its own probability)
        frontier = [(-p, i, -1, 0, t, p) for i, (p, t) in enumerate(zip(values[0], tokens[0]))]
        heapq.heapify(frontier)
        order = len(frontier)
        chosen, parents, probs, expected = [], [], [], 1.0
        while frontier:
            negative, _, parent, depth, token, prob = heapq.heappop(frontier)
            score = -negative
            if score < self.threshold or not budget.admits(score, expected, len(chosen)):
                break
            node = len(chosen)
            chosen.append(token)
            parents.append(parent)
            probs.append(prob)
            expected += score
            if depth + 1 < depth_limit:
                for p, t in zip(values[depth + 1], tokens[depth + 1]):
                    heapq.heappush(frontier, (-score * p, order, node, depth + 1, t, p))
                    order += 1
        if not chosen:
            return DraftTree.empty(seq_id)
        return DraftTree(
            seq_id,
            torch.tensor(chosen, dtype=torch.long),
            torch.tensor(parents, dtype=torch.long),
            torch.tensor(probs, dtype=torch.float32),
        )

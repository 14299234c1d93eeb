"""The per-forward description of a batch of trees that every tree-attention layer shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TreeMetadata:
    """Where each sequence's tree sits in the cache, and which nodes each query row sees.

    Attributes:
        prefix_lens: ``[B]`` int, committed tokens before the tree (always visible).
        tree_lens: ``[B]`` int, tree nodes after the prefix, in BFS order.
        q_lens: ``[B]`` int, queried nodes: the last ``q_lens[b]`` of sequence ``b``'s tree.
        tree_mask: ``[B, Tq, W]`` int32 from :func:`ancestor_bits` (rows of the queried nodes).
    """

    prefix_lens: torch.Tensor
    tree_lens: torch.Tensor
    q_lens: torch.Tensor
    tree_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TreeMetadata:
        """The same metadata with every tensor on ``device``."""
        return TreeMetadata(
            self.prefix_lens.to(device),
            self.tree_lens.to(device),
            self.q_lens.to(device),
            self.tree_mask.to(device),
        )

"""A transformers causal LM that reads and writes a preallocated KV cache through tree attention.

Tree attention is plugged in through transformers' attention-function registry under the name
``tandem_tree``. When a forward call carries no tree batch (Hugging Face ``generate`` on the same
model object, for instance) the function falls back to stock SDPA, so the model stays usable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from actors.cpu_linear import rows_computed, speeds_up, use_weight_major
from actors.lean_decoder import LeanDecoder
from kernels.tree_attention import TreeMetadata, additive_mask, dense_tree_mask, pack_bits, tree_attention

ATTENTION_NAME = "tandem_tree"


@dataclass(frozen=True)
class TreeInput:
    """One slot's part of a forward: the newest nodes of a tree hanging off a cached prefix.

    Attributes:
        slot: KV cache slot of the sequence.
        prefix_len: cached tokens, all visible.
        tree_len: tree nodes after this forward; the new ones are the last ``len(tokens)``.
        tokens: ``[q]`` ids of the new nodes.
        positions: ``[q]`` their positions (prefix_len + depth - 1).
        ancestors: ``[q, tree_len]`` bool, ancestor-or-self of each new node among the tree.
    """

    slot: int
    prefix_len: int
    tree_len: int
    tokens: list[int]
    positions: list[int]
    ancestors: torch.Tensor


@dataclass
class TreeBatch:
    """Per-forward attention metadata, built once and shared by every layer."""

    cache_k: torch.Tensor  # [L, slots, Hkv, S, D]
    cache_v: torch.Tensor
    rows: int  # batch rows
    slots: torch.Tensor | None  # [rows] cache slot of each row; None: row b is slot b
    kv_len: int  # cache positions any row reads
    meta: TreeMetadata  # [rows] lengths, [rows, Tq, W] ancestor mask
    dense_mask: torch.Tensor | None  # [rows, Tq, kv_len] additive, for the reference backend
    write_rows: torch.Tensor  # [n] batch row of each valid query token
    write_slots: torch.Tensor  # [n] its cache slot
    write_cols: torch.Tensor  # [n] its column in the padded query
    write_pos: torch.Tensor  # [n] its cache position
    backend: str


def attend(batch: TreeBatch, layer: int, query, key, value, scale: float | None) -> torch.Tensor:
    """Write a layer's new keys and values (``[B, Hkv, Tq, D]``) into the cache, then tree-attend
    ``query`` (``[B, Hq, Tq, D]``) over it; returns ``[B, Hq, Tq, D]``."""
    cache_k, cache_v = batch.cache_k[layer], batch.cache_v[layer]
    cache_k[batch.write_slots, :, batch.write_pos] = key[batch.write_rows, :, batch.write_cols]
    cache_v[batch.write_slots, :, batch.write_pos] = value[batch.write_rows, :, batch.write_cols]
    if batch.slots is None:
        keys, values = cache_k[: batch.rows], cache_v[: batch.rows]
    else:  # a few scattered slots: gather just their used positions
        keys, values = cache_k[batch.slots, :, : batch.kv_len], cache_v[batch.slots, :, : batch.kv_len]
    return tree_attention(
        query,
        keys,
        values,
        batch.meta,
        scale=scale,
        backend=batch.backend,
        dense_mask=batch.dense_mask,
        check=layer == 0,  # the metadata is the same for every layer
    )


def tree_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``tandem_tree`` attention function: :func:`attend`, or SDPA for a call without a tree."""
    batch: TreeBatch | None = kwargs.pop("tree_batch", None)
    if batch is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    return attend(batch, module.layer_idx, query, key, value, scaling).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, tree_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def truncated_view(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """The first ``num_layers`` decoder layers of ``model`` plus its final norm and LM head,
    sharing their weights (for self-speculation)."""
    total = model.config.num_hidden_layers
    if not 0 < num_layers < total:
        raise ValueError(f"early-exit layers must be in [1, {total - 1}], got {num_layers}")
    view = copy.copy(model)
    view._modules = dict(model._modules)
    backbone = copy.copy(model.model)
    backbone._modules = dict(model.model._modules)
    backbone._modules["layers"] = torch.nn.ModuleList(list(model.model.layers)[:num_layers])
    backbone.config = copy.copy(model.config)
    backbone.config.num_hidden_layers = num_layers
    view._modules["model"] = backbone
    view.config = backbone.config
    return view


class SlotTable:
    """Maps live sequences to KV cache slots, keeping the live slots contiguous (0 .. n - 1)
    so that a step's batch is a view of the cache, never a gather."""

    def __init__(self, slots: int):
        self.capacity = slots
        self.owners: list[int] = []  # slot → seq_id

    @property
    def free(self) -> int:
        return self.capacity - len(self.owners)

    def claim(self, seq_id: int) -> int:
        if not self.free:
            raise RuntimeError("no free KV slot: release a sequence first")
        self.owners.append(seq_id)
        return len(self.owners) - 1

    def release(self, slot: int) -> int | None:
        """Free ``slot``; returns the sequence moved from the last slot into it, if any."""
        last_owner = self.owners.pop()
        if slot == len(self.owners):
            return None
        self.owners[slot] = last_owner
        return last_owner


def release_sequence(runner: TreeModel, slots: SlotTable, sequences: dict, seq_id: int) -> None:
    """Forget ``sequences[seq_id]`` (anything with ``slot`` and ``kv_len``) and free its slot; the
    sequence in the last live slot moves into the hole, its cache with it."""
    seq = sequences.pop(seq_id)
    moved_id = slots.release(seq.slot)
    if moved_id is not None:
        moved = sequences[moved_id]
        runner.move_slot(moved.slot, seq.slot, moved.kv_len)
        moved.slot = seq.slot


class TreeModel:
    """Runs tree forwards of a causal LM over a preallocated KV cache of ``slots`` sequences.

    Args:
        model: a Llama-family ``*ForCausalLM`` (``.model`` backbone, ``.lm_head``); in float32 on
            a CPU its linear layers become :class:`~actors.cpu_linear.WeightMajorLinear`.
        slots: sequences held at once.
        max_len: cache positions per sequence (prompt + generated + tree).
        backend: tree attention backend (``auto``, ``triton`` or ``reference``).
        decoder: ``auto`` runs the layers through :class:`~actors.lean_decoder.LeanDecoder` when it
            knows the architecture; ``transformers`` always through the model's own forward.
    """

    def __init__(self, model: PreTrainedModel, slots: int, max_len: int, backend="auto", decoder="auto"):
        config = model.config
        model.config._attn_implementation = ATTENTION_NAME
        if speeds_up(model):
            use_weight_major(model)
        #: token rows a forward of so many rows costs (on a CPU a few row counts are cheaper
        #: padded to more: actors/cpu_linear.py)
        self.rows_computed = rows_computed(model)
        self.model = model
        #: the backbone as a few calls per layer (None: transformers' own forward runs it)
        self.decoder = LeanDecoder.of(model) if decoder == "auto" else None
        self.max_len = max_len
        self.backend = backend
        param = next(model.parameters())
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, slots, config.num_key_value_heads, max_len, head_dim)
        self.cache_k = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.cache_v = torch.zeros(shape, dtype=param.dtype, device=param.device)
        # the reference backend reuses one dense mask for every layer; the kernel reads the bits
        self.needs_dense_mask = backend == "reference" or (backend == "auto" and param.device.type != "cuda")

    @property
    def device(self) -> torch.device:
        return self.cache_k.device

    @torch.inference_mode()
    def forward(self, inputs: list[TreeInput]) -> torch.Tensor:
        """Run the new nodes of every input; return hidden states ``[len(inputs), Tq, H]`` (after
        the final norm), row ``i`` for ``inputs[i]``, padded to the longest input."""
        order = sorted(range(len(inputs)), key=lambda i: inputs[i].slot)
        batch, input_ids, position_ids = self._batch([inputs[i] for i in order])
        if self.decoder is not None:
            hidden = self.decoder(input_ids, position_ids, partial(attend, batch))
        else:
            hidden = self.model.model(
                input_ids=input_ids, position_ids=position_ids, use_cache=False, tree_batch=batch
            ).last_hidden_state
        if order == list(range(len(inputs))):
            return hidden
        return hidden[torch.tensor(order, device=hidden.device).argsort()]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` → ``[..., V]`` float32 logits."""
        return self.model.lm_head(hidden).float()

    def move(self, slot_src: list[int], pos_src: list[int], slot_dst: list[int], pos_dst: list[int]) -> None:
        """Copy cache entries (every layer) from (slot, position) pairs to others — KV compaction
        after acceptance, or a slot moving to keep live slots contiguous."""
        if not slot_src:
            return
        device = self.device
        src = (torch.tensor(slot_src, device=device), torch.tensor(pos_src, device=device))
        dst = (torch.tensor(slot_dst, device=device), torch.tensor(pos_dst, device=device))
        for cache in (self.cache_k, self.cache_v):
            cache[:, dst[0], :, dst[1]] = cache[:, src[0], :, src[1]].clone()

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy a whole sequence's cache (``length`` positions) from slot ``src`` to ``dst``."""
        for cache in (self.cache_k, self.cache_v):
            cache[:, dst, :, :length] = cache[:, src, :, :length]

    def _batch(self, inputs: list[TreeInput]) -> tuple[TreeBatch, torch.Tensor, torch.Tensor]:
        """Row ``b`` for ``inputs[b]`` (sorted by slot). Rows are slots 0 .. rows - 1 when a
        step has every live sequence; otherwise (a prefill step) the rows name their slots."""
        rows = len(inputs)
        slots = [item.slot for item in inputs]
        q_rows = max(len(item.tokens) for item in inputs)
        tree_width = max(item.tree_len for item in inputs)
        input_ids = torch.zeros(rows, q_rows, dtype=torch.long)
        position_ids = torch.zeros(rows, q_rows, dtype=torch.long)
        ancestors = torch.zeros(rows, q_rows, tree_width, dtype=torch.bool)
        prefix_lens = torch.zeros(rows, dtype=torch.int32)
        tree_lens = torch.zeros(rows, dtype=torch.int32)
        q_lens = torch.zeros(rows, dtype=torch.int32)
        write_rows, write_cols, write_pos = [], [], []
        for row, item in enumerate(inputs):
            q = len(item.tokens)
            if item.prefix_len + item.tree_len > self.max_len:
                raise ValueError(f"slot {item.slot} needs {item.prefix_len + item.tree_len} cache positions")
            input_ids[row, :q] = torch.tensor(item.tokens)
            position_ids[row, :q] = torch.tensor(item.positions)
            ancestors[row, :q, : item.tree_len] = item.ancestors
            prefix_lens[row], tree_lens[row], q_lens[row] = (
                item.prefix_len,
                item.tree_len,
                q,
            )
            first = item.prefix_len + item.tree_len - q
            write_rows += [row] * q
            write_cols += range(q)
            write_pos += range(first, first + q)
        kv_len = int((prefix_lens + tree_lens).max())
        device = self.device
        meta = TreeMetadata(prefix_lens, tree_lens, q_lens, pack_bits(ancestors))
        dense = None
        if self.needs_dense_mask:  # built once, shared by every layer
            dense = additive_mask(dense_tree_mask(meta, kv_len), self.cache_k.dtype)
        batch = TreeBatch(
            cache_k=self.cache_k,
            cache_v=self.cache_v,
            rows=rows,
            slots=None if slots == list(range(rows)) else torch.tensor(slots, device=device),
            kv_len=kv_len,
            meta=meta.to(device),
            dense_mask=dense.to(device) if dense is not None else None,
            write_rows=torch.tensor(write_rows, device=device),
            write_slots=torch.tensor([slots[row] for row in write_rows], device=device),
            write_cols=torch.tensor(write_cols, device=device),
            write_pos=torch.tensor(write_pos, device=device),
            backend=self.backend,
        )
        return batch, input_ids.to(device), position_ids.to(device)

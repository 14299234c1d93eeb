"""Linear layers laid out for the few-row products of speculative decoding on a CPU.

A verifier step multiplies every weight matrix by a handful of rows (the last token plus a small
draft tree). MKL's float32 GEMM is poor at that shape: ``x @ W.T`` with 2-16 rows costs up to
twice the single-row product, although both stream the same weights from memory. Computing the
transposed product ``(W @ x.T).T`` instead lets it take the large dimension from ``W`` and runs
near the single-row cost. Measured on the 2-core CPU of docs/benchmarks.md, SmolLM2-135M's 211
linear layers: 2 rows 71 → 32 ms, 4 rows 72 → 51 ms, 16 rows 103 → 86 ms, 32 rows 148 → 122 ms,
1 row unchanged (45 ms). bfloat16 goes through oneDNN, where the swap is slower: it is float32
only. In the whole engine at batch 16 (16 rows per decode step) the swap measured 10% slower than
``nn.Linear`` (51-53 vs 56-60 tok/s, 16 HumanEval prompts, 64 tokens, no drafter), so above
``MAX_ROWS`` rows the stock product runs.

The cost is not monotonic in the row count either: on the same CPU the 211 layers took 38 / 35 /
46 / 32 / 46 / 57 / 73 / 59 ms for 1-8 rows, so 1 row is cheaper computed as 2, 3 as 4 and 7 as 8.
:func:`use_weight_major` measures that table once for the model's largest layer and every layer
pads its rows to the cheapest count at least as large (:func:`cheapest_row_counts`); the draft
budget plans with the padded counts (:meth:`WeightMajorLinear.rows_computed`), so a free node is
drafted rather than wasted.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

MAX_ROWS = 8  # the largest row count that runs weight-major


class WeightMajorLinear(nn.Linear):
    """``nn.Linear`` computing ``(W @ x.T).T`` for up to ``MAX_ROWS`` rows: same parameters, same
    result up to float rounding. ``row_counts[n]`` is the row count ``n`` rows are computed as
    (zero rows added); :func:`use_weight_major` sets it from a measurement."""

    row_counts: tuple[int, ...] = tuple(range(MAX_ROWS + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count > MAX_ROWS:
            return super().forward(x)
        padded = self.row_counts[count]
        if padded > count:
            rows = torch.cat([rows, rows.new_zeros(padded - count, rows.shape[1])])
        out = torch.mm(self.weight, rows.t())[:, :count].t().contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def rows_computed(self, rows: int) -> int:
        """How many rows a product with ``rows`` rows really computes."""
        return self.row_counts[rows] if rows <= MAX_ROWS else rows


def cheapest_row_counts(weight: torch.Tensor, repeats: int = 5) -> tuple[int, ...]:
    """For ``n`` in ``0..MAX_ROWS``, the row count ``m >= n`` whose weight-major product with
    ``weight`` measured fastest (best of ``repeats``, the counts interleaved so that a stall
    hits one sample, not one count)."""
    seconds = [float("inf")] * (MAX_ROWS + 1)
    inputs = [torch.randn(n, weight.shape[1], dtype=weight.dtype) for n in range(MAX_ROWS + 1)]
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for n in range(1, MAX_ROWS + 1):
                start = time.perf_counter()
                torch.mm(weight, inputs[n].t())
                seconds[n] = min(seconds[n], time.perf_counter() - start)
    seconds[0] = 0.0
    return tuple(min(range(n, MAX_ROWS + 1), key=seconds.__getitem__) for n in range(MAX_ROWS + 1))


def speeds_up(model: nn.Module) -> bool:
    """Whether the weight-major product is the faster one for ``model`` (float32 on a CPU)."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32


def use_weight_major(model: nn.Module) -> int:
    """Switch every plain ``nn.Linear`` of ``model`` to :class:`WeightMajorLinear` in place (the
    weights are not copied), with row counts measured on the largest; returns how many were
    switched."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        return 0
    row_counts = cheapest_row_counts(max((m.weight for m in linears), key=torch.Tensor.numel))
    for module in linears:
        module.__class__ = WeightMajorLinear
        module.row_counts = row_counts
    return len(linears)


def rows_computed(model: nn.Module) -> Callable[[int], int]:
    """How many rows ``model``'s linear layers compute for an input of so many rows."""
    layer = next((m for m in model.modules() if type(m) is WeightMajorLinear), None)
    return layer.rows_computed if layer else int


def linear_like(like: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A linear layer of ``like``'s kind (``nn.Linear``, or weight-major with its measured row
    counts) over ``weight`` and ``bias`` as they are: views stay views, nothing is copied, so
    in-place loads into the tensors they view reach it."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.__class__ = type(like)
    if "row_counts" in vars(like):
        layer.row_counts = like.row_counts
    grad = like.weight.requires_grad
    layer.weight = nn.Parameter(weight.detach(), requires_grad=grad)
    layer.bias = nn.Parameter(bias.detach(), requires_grad=grad) if bias is not None else None
    return layer


def stock_copy(model: nn.Module) -> nn.Module:
    """``model`` with plain ``nn.Linear`` layers, for running peers (Hugging Face ``generate``)
    exactly as transformers ships them: a copy when the engine swapped layers, else ``model``
    itself (no second set of weights on a GPU or in bfloat16)."""
    if not any(type(module) is WeightMajorLinear for module in model.modules()):
        return model
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if type(module) is WeightMajorLinear:
            module.__class__ = nn.Linear
            module.__dict__.pop("row_counts", None)
    return clone

"""Linear layers laid out for the few-row products of speculative decoding on a CPU.

A verifier step multiplies every weight matrix by a handful of rows (the last token plus a small
draft tree). Both products stream the same weights from memory, yet MKL's float32 GEMM computing
``x @ W.T`` with 2-16 rows costs up to twice the single-row product. :class:`WeightMajorLinear`
computes those products weight row by weight row instead: with the compiled kernel of
kernels/cpu_gemm.py where it runs (x86 Linux with a C compiler; up to 32 rows), else as MKL's
transposed product ``(W @ x.T).T``, which takes the large dimension from ``W`` (up to 8 rows;
measured on the 2-core CPU of docs/benchmarks.md, SmolLM2-135M's 211 linear layers: 2 rows 71 → 32
ms, 4 rows 72 → 51 ms, 1 row unchanged; bfloat16 goes through oneDNN, where the swap is slower:
it is float32 only). Above those counts the stock product runs.

The cost is not monotonic in the row count either: through MKL the 211 layers took 38 / 35 / 46 /
32 / 46 / 57 / 73 / 59 ms for 1-8 rows, so 1 row is cheaper computed as 2, 3 as 4 and 7 as 8.
:func:`use_weight_major` measures the row counts once for the model's largest layer and every
layer pads its rows to the cheapest count at least as large (:func:`cheapest_row_counts`); the
draft budget plans with the padded counts (:meth:`WeightMajorLinear.rows_computed`), so a free
node is drafted rather than wasted.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from kernels.cpu_gemm import MAX_ROWS as KERNEL_MAX_ROWS
from kernels.cpu_gemm import few_rows_gemm

MKL_MAX_ROWS = 8  # the most rows MKL's transposed product is faster for


def max_rows() -> int:
    """The most rows a :class:`WeightMajorLinear` computes its own way on this machine."""
    return KERNEL_MAX_ROWS if few_rows_gemm() is not None else MKL_MAX_ROWS


def few_rows_product(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T`` (``[n, in]`` rows, n at most :func:`max_rows`), weight row by weight row."""
    gemm = few_rows_gemm()
    if gemm is not None:
        return gemm(rows, weight)
    return torch.mm(weight, rows.t()).t().contiguous()


class WeightMajorLinear(nn.Linear):
    """``nn.Linear`` computing up to :func:`max_rows` rows with :func:`few_rows_product`: same
    parameters, same result up to float rounding. ``row_counts[n]`` is the row count ``n`` rows
    are computed as (zero rows added); :func:`use_weight_major` sets it from a measurement."""

    row_counts: tuple[int, ...] = tuple(range(MKL_MAX_ROWS + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count >= len(self.row_counts) or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return super().forward(x)  # many rows, or a product to differentiate
        padded = self.row_counts[count]
        if padded > count:
            rows = torch.cat([rows, rows.new_zeros(padded - count, rows.shape[1])])
        out = few_rows_product(self.weight, rows)[:count]
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def rows_computed(self, rows: int) -> int:
        """How many rows a product with ``rows`` rows really computes."""
        return self.row_counts[rows] if rows < len(self.row_counts) else rows


def cheapest_row_counts(weight: torch.Tensor, repeats: int = 5) -> tuple[int, ...]:
    """For ``n`` in ``0..max_rows()``, the row count ``m >= n`` whose :func:`few_rows_product`
    with ``weight`` measured fastest (best of ``repeats``, the counts interleaved so that a stall
    hits one sample, not one count)."""
    most = max_rows()
    seconds = [float("inf")] * (most + 1)
    inputs = [torch.randn(n, weight.shape[1], dtype=weight.dtype) for n in range(most + 1)]
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for n in range(1, most + 1):
                start = time.perf_counter()
                few_rows_product(weight, inputs[n])
                seconds[n] = min(seconds[n], time.perf_counter() - start)
    seconds[0] = 0.0
    return tuple(min(range(n, most + 1), key=seconds.__getitem__) for n in range(most + 1))


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

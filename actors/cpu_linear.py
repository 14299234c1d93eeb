"""Linear layers laid out for the few-row products of speculative decoding on a CPU.

A verifier step multiplies every weight matrix by a handful of rows (the last token plus a small
draft tree). MKL's float32 GEMM is poor at that shape: ``x @ W.T`` with 2-16 rows costs up to
twice the single-row product, although both stream the same weights from memory. Computing the
transposed product ``(W @ x.T).T`` instead lets it take the large dimension from ``W`` and runs
near the single-row cost. Measured on the 2-core CPU of docs/benchmarks.md, SmolLM2-135M's 211
linear layers: 2 rows 71 → 32 ms, 4 rows 72 → 51 ms, 16 rows 103 → 86 ms, 32 rows 148 → 122 ms,
1 row unchanged (45 ms). A single row is the exception the other way: MKL's matrix-vector
product is slower than the two-row product (46 vs 32 ms), so one row is computed as two. bfloat16
goes through oneDNN, where the swap is slower: it is float32 only. In the whole engine at batch 16
(16 rows per decode step) the swap measured 10% slower than ``nn.Linear`` (51-53 vs 56-60 tok/s,
16 HumanEval prompts, 64 tokens, no drafter), so above ``MAX_ROWS`` rows the stock product runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

MAX_ROWS = 8  # the largest row count that runs weight-major


class WeightMajorLinear(nn.Linear):
    """``nn.Linear`` computing ``(W @ x.T).T`` for up to ``MAX_ROWS`` rows: same parameters, same
    result up to float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > MAX_ROWS:
            return super().forward(x)
        if rows.shape[0] == 1:  # the two-row product is the faster one (module docstring)
            out = torch.mm(self.weight, rows.expand(2, -1).contiguous().t())[:, :1].t().contiguous()
        else:
            out = torch.mm(self.weight, rows.t()).t().contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)


def speeds_up(model: nn.Module) -> bool:
    """Whether the weight-major product is the faster one for ``model`` (float32 on a CPU)."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32


def use_weight_major(model: nn.Module) -> int:
    """Switch every plain ``nn.Linear`` of ``model`` to :class:`WeightMajorLinear` in place (the
    weights are not copied); returns how many were switched."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    for module in linears:
        module.__class__ = WeightMajorLinear
    return len(linears)


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
    return clone

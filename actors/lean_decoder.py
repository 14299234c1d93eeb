"""A lean forward of a Llama-family decoder (Llama, Qwen2, Mistral) for tree verification.

For a small model, transformers' layer code spends a good part of a verifier step on a CPU in
Python and in small tensor ops around the products (keyword plumbing, mask and cache classes,
per-projection calls). This forward runs the same arithmetic on the same parameters with few
calls per layer: the q/k/v projections are one product, and so are gate/up, through fused linear
layers whose weights the original projections become views of (no second copy; in-place loads
such as ``load_state_dict`` reach both). Measured on that CPU over a 300-token prefix, backbone and
LM head for 1 / 2 / 4 / 8 query rows: 86.6 / 92.8 / 89.2 / 125.3 ms through transformers, 75.1 /
82.6 / 76.3 / 116.8 ms here; in the engine, 107.9 → 100.9 ms per step (docs/benchmarks.md).
Architectures it does not know, or ``engine.decoder=transformers``, run through transformers.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import torch
from torch import nn

from actors.cpu_linear import linear_like

FAMILY = ("llama", "qwen2", "mistral")

#: attend(layer index, q [B, Hq, T, D], k [B, Hkv, T, D], v, scale) → [B, Hq, T, D]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

_FUSED: weakref.WeakKeyDictionary[nn.Module, nn.Linear] = weakref.WeakKeyDictionary()  # first layer → fused


def fuse(linears: list[nn.Linear]) -> nn.Linear:
    """One linear layer computing ``linears`` side by side; each of them is left holding views of
    its weight (and bias), so the parameters exist once. Fusing the same layers again returns the
    layer made the first time (a self-speculation drafter shares the verifier's layers)."""
    first = linears[0]
    made = _FUSED.get(first)
    if made is not None and shares_storage(made.weight, first.weight):
        return made
    weight = torch.cat([linear.weight.detach() for linear in linears])
    has_bias = [linear.bias is not None for linear in linears]
    bias = torch.cat([bias_of(linear) for linear in linears]) if any(has_bias) else None
    fused = linear_like(first, weight, bias)  # nn.Linear, or the CPU's weight-major product
    grad = first.weight.requires_grad
    start = 0
    for linear, own_bias in zip(linears, has_bias):
        end = start + linear.out_features
        linear.weight = nn.Parameter(fused.weight.data[start:end], requires_grad=grad)
        if own_bias:
            linear.bias = nn.Parameter(fused.bias.data[start:end], requires_grad=grad)
        start = end
    _FUSED[first] = fused
    return fused


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def bias_of(linear: nn.Linear) -> torch.Tensor:
    return linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


class _Layer:
    def __init__(self, layer: nn.Module, sizes: tuple[int, int]):
        """``sizes``: the q and the k/v projection widths the heads make."""
        attention, mlp = layer.self_attn, layer.mlp
        qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
        gate_up = [mlp.gate_proj, mlp.up_proj]
        if (attention.q_proj.out_features, attention.k_proj.out_features) != sizes:
            raise AttributeError("projection widths are not heads x head_dim")  # transformers runs it
        self.out = attention.o_proj
        self.scale = attention.scaling
        self.down, self.act = mlp.down_proj, mlp.act_fn
        self.norm_in, self.norm_post = layer.input_layernorm, layer.post_attention_layernorm
        # the architecture's own rotary helper (its modeling module's function)
        self.rotate_half = inspect.getmodule(type(attention)).rotate_half
        # fused last: a layout this class cannot read fails above, before any weight is touched
        self.qkv, self.gate_up = fuse(qkv), fuse(gate_up)


class LeanDecoder:
    """The backbone of ``model`` (a ``*ForCausalLM`` of :data:`FAMILY`) as a few calls per layer.

    Build it with :meth:`of`, which answers None for a model it cannot run.
    """

    def __init__(self, model: nn.Module):
        config, backbone = model.config, model.model
        self.embed, self.rotary, self.norm = backbone.embed_tokens, backbone.rotary_emb, backbone.norm
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        sizes = (self.q_heads * self.head_dim, self.kv_heads * self.head_dim)
        self.layers = [_Layer(layer, sizes) for layer in backbone.layers]

    @classmethod
    def of(cls, model: nn.Module) -> LeanDecoder | None:
        if getattr(model.config, "model_type", None) not in FAMILY:
            return None
        try:
            return cls(model)
        except AttributeError:  # a family member laid out differently: transformers runs it
            return None

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        """``[B, T]`` ids and positions → ``[B, T, H]`` hidden states after the final norm; ``attend``
        writes a layer's new keys and values to the cache and attends over it."""
        rows, width = input_ids.shape
        hidden = self.embed(input_ids)
        cos, sin = (part.unsqueeze(1) for part in self.rotary(hidden, position_ids))  # [B, 1, T, D]
        hidden = hidden.view(rows * width, -1)
        rotated = self.q_heads + self.kv_heads
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.norm_in(hidden)).view(rows, width, -1, self.head_dim).transpose(1, 2)
            qk, v = qkv.split([rotated, self.kv_heads], dim=1)
            # q and k rotated as one tensor: the same products per element, half the calls
            qk = qk * cos + layer.rotate_half(qk) * sin
            q, k = qk.split([self.q_heads, self.kv_heads], dim=1)
            out = attend(index, q, k, v, layer.scale)
            hidden = hidden + layer.out(out.transpose(1, 2).reshape(rows * width, -1))
            gate, up = layer.gate_up(layer.norm_post(hidden)).chunk(2, dim=-1)
            hidden = hidden + layer.down(layer.act(gate) * up)
        return self.norm(hidden).view(rows, width, -1)

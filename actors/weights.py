"""Live verifier weight swap: copy a (partial) state dict into a running model in place.

The engine never copies a verifier weight, so one in-place copy into the tensors the model's
``state_dict`` names reaches every reader:

- the lean decoder's fused q/k/v and gate/up layers: the original projections' weights are views
  of them (:func:`actors.lean_decoder.fuse`);
- :class:`~actors.cpu_linear.WeightMajorLinear` and the few-row kernel of kernels/cpu_gemm.py:
  they read the layer's own weight on every call (no transposed or packed copy to refresh);
- tied input embeddings and LM head: one parameter under two names;
- drafters inside the verifier: early-exit views (:func:`actors.tree_model.truncated_view`) hold
  the same layers, and draft-vocabulary heads (:func:`actors.drafters.model.draft_head`) views
  of the LM head's first rows; Medusa heads read the verifier's hidden states and LM head.

What other state depends on weights needs nothing: the swap is refused while any request runs,
so no KV cache entry of a live sequence exists; the n-gram drafter's recycled top-k table keeps
the old model's successors until new verdicts overwrite them, which changes what it drafts (speed)
and never what the verifier accepts (output).
"""

from __future__ import annotations

import torch
from torch import nn


def load_in_place(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model``'s parameters and buffers in place, under ``no_grad``.

    Every key must be one of ``model.state_dict()``'s (Hugging Face names such as
    ``model.layers.0.self_attn.q_proj.weight``), with the same shape; a subset is fine (keys left
    out keep their values). Values are cast to the target's dtype and device. Everything is
    checked before anything is copied, so a refused state dict leaves the model as it was.

    Args:
        model: the model to update.
        state_dict: name → tensor.

    Raises:
        ValueError: naming the unknown keys, or the first key whose value is not a tensor, has
            another shape (both shapes given) or kind (floating point or not), or differs from
            the value given for a key it is tied to.
    """
    targets = model.state_dict(keep_vars=True)  # tied names included, each once per name
    unknown = sorted(key for key in state_dict if key not in targets)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        example = next(iter(targets), "")
        raise ValueError(
            f"{len(unknown)} key(s) name no parameter or buffer of the verifier: {shown} "
            f"(keys are the model's state_dict names, e.g. {example!r})"
        )
    tied: dict[tuple, str] = {}
    for key, value in state_dict.items():
        target = targets[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: expected a tensor, got {type(value).__name__}")
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{key}: shape {tuple(value.shape)} does not match the verifier's {tuple(target.shape)}"
            )
        if value.is_floating_point() != target.is_floating_point():
            raise ValueError(f"{key}: dtype {value.dtype} cannot replace the verifier's {target.dtype}")
        alias = (target.untyped_storage().data_ptr(), target.storage_offset(), target.shape, target.stride())
        other = tied.setdefault(alias, key)
        if other != key and not torch.equal(state_dict[other].to(value.device, value.dtype), value):
            raise ValueError(f"{key} and {other} are one tied tensor in the verifier, given different values")
    with torch.no_grad():
        for key, value in state_dict.items():
            targets[key].copy_(value)

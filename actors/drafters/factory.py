"""Building the drafter an :class:`~actors.engine_config.EngineConfig` names, on a device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from actors.drafters.base import Drafter
from actors.drafters.spec import DEFAULT_EARLY_EXIT_LAYERS, parse_drafter
from actors.engine_config import EngineConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def build_drafter(
    config: EngineConfig, verifier: PreTrainedModel | None, device: torch.device
) -> Drafter | None:
    """The drafter ``config.drafter`` names, placed on ``device`` (None for ``none``).
    ``verifier`` is needed by ``early-exit`` and ``heads``; given, a model drafter's vocabulary is
    checked against it and a compact drafter folder takes its shared tensors from it (else from
    ``config.model``, loaded for the purpose)."""
    from actors.drafters.artifact import load_drafter
    from actors.drafters.heads import BUNDLED as HEADS_BUNDLED
    from actors.drafters.heads import HeadsDrafter, MedusaHeads
    from actors.drafters.model import ModelDrafter
    from actors.drafters.ngram import NgramDrafter
    from actors.tree_model import truncated_view

    kind, arg = parse_drafter(config.drafter)
    slots, length = config.max_batch_size, config.max_model_len
    if kind == "none":
        return None
    if kind == "ngram":
        return NgramDrafter()
    if kind in ("early-exit", "heads", "ngram+heads") and verifier is None:
        raise ValueError(f"drafter '{kind}' runs inside the verifier; it needs the verifier model")
    if kind in ("heads", "ngram+heads"):
        if arg in HEADS_BUNDLED and config.model != "default":
            raise ValueError(
                f"drafter '{kind}:{arg}' is trained for the embedded default model, not {config.model!r}: "
                f"use --drafter ngram, or heads trained for it (tandem distill-heads)"
            )
        heads = MedusaHeads.load(arg)
        if heads.hidden_size != verifier.config.hidden_size:
            raise ValueError(
                f"heads {arg} have hidden_size {heads.hidden_size}, the verifier "
                f"{verifier.config.hidden_size}: heads are trained on one verifier's hidden states"
            )
        heads = heads.to(device, next(verifier.parameters()).dtype)
        drafter = HeadsDrafter(heads, verifier.lm_head, vocab=config.draft_vocab)
        return drafter if kind == "heads" else NgramDrafter(heads=drafter)
    if kind == "early-exit":
        view = truncated_view(verifier, int(arg or DEFAULT_EARLY_EXIT_LAYERS))
        return ModelDrafter(view, slots, length, **runner_settings(config))
    draft = load_drafter(arg, config.dtype, config.model if verifier is None else verifier).to(device)
    if verifier is not None and draft.config.vocab_size != verifier.config.vocab_size:
        raise ValueError(
            f"drafter {arg} has vocab_size {draft.config.vocab_size}, the verifier "
            f"{verifier.config.vocab_size}: a drafter must share the verifier's tokenizer"
        )
    return ModelDrafter(draft, slots, length, assistant_model=draft, **runner_settings(config))


def runner_settings(config: EngineConfig) -> dict:
    """How a model drafter runs its layers, from the engine's settings."""
    return {"attention": config.attention, "decoder": config.decoder, "vocab": config.draft_vocab}

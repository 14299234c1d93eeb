"""Training Medusa-style heads (``actors/drafters/heads.py``) on the distillation rows.

The verifier is frozen: its last hidden states over each row are computed once (after its final
norm, as the engine's verifier hands them to the drafter). Head ``k`` on the hidden state at
position ``p`` learns the teacher's distribution of the token at ``p + 1 + k``, which a row stores
at position ``p + k``, with the same divergences and tail bucket as the model students
(``actors/trainers/losses.py``). The rows are those of the distillation job's teacher stage.

Given a checkpoint folder, training saves the heads, the optimizer and the history there at every
evaluation and a later run with the same settings resumes from it: the row order is a function of
the step, so a resumed run ends with the same heads as an uninterrupted one. The folder is a heads
folder as it is (``heads.json``, safetensors weights), plus the optimizer's state in safetensors
(``actors/trainers/checkpoints.py``) and :data:`STATE_FILE` (step, history, settings, the
optimizer's hyperparameters) in JSON: nothing pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from actors.drafters.heads import MedusaHeads
from actors.trainers.checkpoints import load_optimizer, save_optimizer
from actors.trainers.data import TokenBatch, collate, step_rows
from actors.trainers.distill import warmup_cosine
from actors.trainers.losses import distill_loss

STATE_FILE = "heads_state.json"


@dataclass
class HeadsConfig:
    """Settings of :func:`train_heads`.

    Attributes:
        num_heads: heads, the ``k``-th predicting ``k`` tokens past the verifier's own.
        max_steps: optimizer steps.
        batch_size: rows per step.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to a tenth).
        warmup_steps: warm-up steps.
        loss: ``fkl``, ``rkl``, ``jsd`` or ``tvd``.
        max_len: tokens per row at most.
        seed: seeds the row order.
    """

    num_heads: int = 3
    max_steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    loss: str = "fkl"
    max_len: int = 1024
    seed: int = 0


@torch.no_grad()
def verifier_states(verifier: PreTrainedModel, rows: list[dict], batch_size: int, max_len: int) -> list:
    """Each row's ``[L, H]`` last hidden states of the verifier (after its final norm)."""
    device, out = next(verifier.parameters()).device, []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        batch = collate(chunk, max_len).to(device)
        states = verifier.model(input_ids=batch.input_ids).last_hidden_state.float()
        lengths = [min(len(row["input_ids"]), max_len or len(row["input_ids"])) for row in chunk]
        out += [states[b, :length] for b, length in enumerate(lengths)]
    return out


def stack(states: list[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pad ``[L_i, H]`` states to ``[B, width, H]``."""
    padded = states[0].new_zeros(len(states), width, states[0].shape[-1])
    for b, row in enumerate(states):
        padded[b, : len(row)] = row[:width]
    return padded


def heads_loss(heads: MedusaHeads, lm_head, states: torch.Tensor, batch: TokenBatch, loss: str = "fkl"):
    """Mean over heads of each head's mean divergence from the teacher; and the share of the
    teacher's top token each head ranks first, per head."""
    total, top1 = 0.0, []
    for k in range(1, heads.num_heads + 1):
        mask = batch.mask[:, k:]  # teacher rows at p + k, the token at p + 1 + k
        if not mask.any():
            top1.append(float("nan"))
            continue
        logits = lm_head(heads.head(k - 1, states[:, :-k][mask])).float()
        ids, probs = batch.topk_ids[:, k:][mask], batch.topk_probs[:, k:][mask]
        kept = torch.ones(len(ids), dtype=torch.bool, device=ids.device)
        total = total + distill_loss(logits, ids, probs, kept, loss)
        top1.append(float((logits.argmax(-1) == ids[:, 0]).float().mean()))
    return total / heads.num_heads, top1


def save_checkpoint(folder: Path, heads: MedusaHeads, optimizer, history: list[dict], config: HeadsConfig):
    heads.save(folder)
    groups = save_optimizer(folder, heads.named_parameters(), optimizer)
    state = {"step": history[-1]["step"], "history": history, "config": asdict(config)}
    (folder / STATE_FILE).write_text(json.dumps(state | {"param_groups": groups}, indent=1))


def load_checkpoint(folder: Path, heads: MedusaHeads, optimizer, config: HeadsConfig) -> list[dict]:
    """The history so far (empty: nothing to resume), after loading the heads and optimizer."""
    if not (folder / STATE_FILE).is_file():
        return []
    state = json.loads((folder / STATE_FILE).read_text())
    for key, value in asdict(config).items():
        if key != "max_steps" and state["config"].get(key) != value:
            raise ValueError(
                f"checkpoint {folder} was trained with heads.{key}={state['config'].get(key)!r}, "
                f"this run has {value!r}: resume with the same settings or use another checkpoint"
            )
    heads.load_state_dict(MedusaHeads.load(folder).state_dict())
    load_optimizer(folder, heads.named_parameters(), optimizer, state.get("param_groups", []))
    return state["history"]


def train_heads(
    verifier: PreTrainedModel,
    train_rows: list[dict],
    val_rows: list[dict],
    config: HeadsConfig,
    log=print,
    checkpoint: str | Path | None = None,
) -> tuple[MedusaHeads, list[dict]]:
    """Train heads for ``verifier`` (frozen) on the distillation rows; returns them and the
    held-out history (``step``, ``val_loss``, ``val_top1`` per head) every tenth of the run.
    ``checkpoint``: a folder to save to at every evaluation and resume from."""
    verifier = verifier.eval().requires_grad_(False)
    device = next(verifier.parameters()).device
    heads = MedusaHeads(verifier.config.hidden_size, config.num_heads).to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate, foreach=False)
    folder = Path(checkpoint).expanduser() if checkpoint else None
    history = load_checkpoint(folder, heads, optimizer, config) if folder else []
    start = history[-1]["step"] if history else 0
    if start:
        log(f"resuming from step {start} ({folder})")
    train_states = verifier_states(verifier, train_rows, config.batch_size, config.max_len)
    val_states = verifier_states(verifier, val_rows, config.batch_size, config.max_len)

    def batch_of(rows: list[dict], states: list[torch.Tensor]) -> tuple[TokenBatch, torch.Tensor]:
        batch = collate(rows, config.max_len).to(device)
        return batch, stack(states, batch.input_ids.shape[1])

    def evaluate(step: int) -> dict:
        losses, hits = [], []
        with torch.no_grad():
            for first in range(0, len(val_rows), config.batch_size):
                end = first + config.batch_size
                batch, states = batch_of(val_rows[first:end], val_states[first:end])
                loss, top1 = heads_loss(heads, verifier.lm_head, states, batch, config.loss)
                losses.append(float(loss))
                hits.append(top1)
        per_head = [sum(column) / len(column) for column in zip(*hits)]
        return {"step": step, "val_loss": sum(losses) / len(losses), "val_top1": per_head}

    if not history:
        history = [evaluate(0)]
        log(history[-1])
    every = max(1, config.max_steps // 10)
    for step in range(start, config.max_steps):
        lr = warmup_cosine(step, config.learning_rate, config.warmup_steps, config.max_steps, 0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        picked = step_rows(len(train_rows), config.batch_size, step, config.seed)
        batch, states = batch_of([train_rows[i] for i in picked], [train_states[i] for i in picked])
        loss, _ = heads_loss(heads, verifier.lm_head, states, batch, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % every == 0 or step + 1 == config.max_steps:
            history.append(evaluate(step + 1) | {"loss": float(loss.detach())})
            if folder:
                save_checkpoint(folder, heads, optimizer, history, config)
            log(history[-1])
    return heads.eval(), history

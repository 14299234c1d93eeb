"""The teacher side of distillation: responses to prompts, then the verifier's top-k next-token
distribution at every response position.

Responses come from the speculative engine (the verifier's own greedy or sampled output, fast and
lossless), or, for an ``lmbda`` fraction of the prompts, from the student itself (on-policy, as in
GKD): the verifier then scores text the drafter actually produces. Either way one plain forward
pass of the verifier over prompt + response gives the teacher signal. A plain class: Ray Data
makes actors of it in ``pipelines/distill/data.py``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from actors.engine import Engine, EngineConfig
from actors.messages import SamplingParams
from actors.trainers.students import StudentConfig, build_student

log = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    """How training rows are made.

    Attributes:
        topk: teacher tokens kept per position (the rest of its mass is the loss's tail bucket).
        max_new_tokens: response length cap.
        temperature: 0 = the verifier's greedy response (what a greedy drafter must predict);
            > 0 samples it (more varied text).
        samples: responses per prompt (use ``temperature > 0`` for them to differ).
        lmbda: fraction of responses sampled by the student instead of the verifier (GKD's
            on-policy fraction), in [0, 1]; needs a student.
        student_temperature: sampling temperature of the on-policy responses.
        chat: wrap prompts in the verifier's chat template.
        seed: seeds sampling and the on-policy draw (a row's draw depends only on it and the row).
    """

    topk: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    samples: int = 1
    lmbda: float = 0.0
    student_temperature: float = 1.0
    chat: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("topk", "max_new_tokens", "samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"teacher.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"teacher.lmbda must be in [0, 1], got {self.lmbda}")
        if self.temperature < 0 or self.student_temperature <= 0:
            raise ValueError("teacher.temperature must be >= 0 and teacher.student_temperature > 0")


def unit_draw(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@torch.inference_mode()
def teacher_topk(model, sequences: list[list[int]], starts: list[int], k: int) -> list[tuple]:
    """The verifier's top-k next tokens after each position ``start .. len - 2`` of each sequence.

    Args:
        model: the verifier (a ``*ForCausalLM``).
        sequences: ``B`` token id lists (prompt + response).
        starts: per sequence, the first position whose next-token distribution is kept (the
            prompt's last token, whose successor is the response's first).
        k: tokens kept per position.

    Returns:
        Per sequence ``(ids [R, k] int64, probs [R, k] float32)``, ``R = len - 1 - start``.
    """
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, tokens in enumerate(sequences):  # right padding: causal attention never sees it
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    hidden = model.model(input_ids=input_ids.to(device)).last_hidden_state  # [B, L, H]
    out = []
    for row, (tokens, start) in enumerate(zip(sequences, starts)):
        probs = model.lm_head(hidden[row, start : len(tokens) - 1]).float().softmax(-1)  # [R, V]
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        out.append((top.indices.cpu(), top.values.cpu()))
    return out


class TeacherWorker:
    """Builds the verifier's engine (and the student, when on-policy), then turns prompt rows
    into training rows.

    Args:
        engine: the verifier (``engine.model``) and the drafter that speeds up its generation.
        config: see :class:`TeacherConfig`.
        student: the student that samples the on-policy responses (``lmbda > 0``).
    """

    def __init__(self, engine: EngineConfig, config: TeacherConfig, student: StudentConfig | None = None):
        if config.lmbda > 0 and student is None:
            raise ValueError("teacher.lmbda > 0 samples responses from the student: give its settings")
        self.config = config
        self.engine = Engine(engine)
        self.student = None
        if config.lmbda > 0:
            model, _ = build_student(student, engine.model, engine.dtype)
            self.student = model.eval().requires_grad_(False).to(self.engine.device)

    def __call__(self, rows: list[dict]) -> list[dict]:
        """Prompt rows (``id``, ``prompt``, optional ``split``) → training rows: ``id``,
        ``input_ids`` (prompt + response), ``start``, ``topk_ids`` ``[R, k]``, ``topk_probs``
        ``[R, k]``, ``source`` (``verifier`` or ``student``), ``split``. Held-out rows
        (``split == "val"``) always get the verifier's greedy response: what a greedy drafter is
        measured on."""
        cfg = self.config
        jobs = []  # (row id, sample, prompt ids, source, split)
        for row in rows:
            prompt_ids = self.engine.encode(row["prompt"], chat=cfg.chat)
            if not self._fits(prompt_ids):
                log.warning(
                    "prompt %s has %d tokens: too long for the engine, skipped", row["id"], len(prompt_ids)
                )
                continue
            split = row.get("split") or "train"
            for sample in range(cfg.samples if split == "train" else 1):
                on_policy = split == "train" and unit_draw(cfg.seed, row["id"], sample) < cfg.lmbda
                jobs.append((row["id"], sample, prompt_ids, "student" if on_policy else "verifier", split))
        responses = self._responses(jobs)
        out = []
        for job, response in zip(jobs, responses):
            if response:
                row = {"id": f"{job[0]}#{job[1]}", "input_ids": job[2] + response, "start": len(job[2]) - 1}
                out.append(row | {"source": job[3], "split": job[4]})
        for row in out:  # one forward per sequence keeps memory flat on long batches
            ((ids, probs),) = teacher_topk(self.engine.model, [row["input_ids"]], [row["start"]], cfg.topk)
            row["topk_ids"], row["topk_probs"] = ids.tolist(), probs.tolist()
        return out

    def _fits(self, prompt_ids: list[int]) -> bool:
        try:
            self.engine.check_prompt(prompt_ids)
        except ValueError:
            return False
        return True

    def _responses(self, jobs: list[tuple]) -> list[list[int]]:
        """Each job's response tokens: the verifier's through the engine, the student's by sampling."""
        cfg = self.config
        out: list[list[int] | None] = [None] * len(jobs)
        by_verifier = [i for i, job in enumerate(jobs) if job[3] == "verifier"]
        if by_verifier:
            params = [
                SamplingParams(
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature if jobs[i][4] == "train" else 0.0,
                    seed=int(unit_draw(cfg.seed, jobs[i][0], jobs[i][1], "seed") * 2**31),
                )
                for i in by_verifier
            ]
            results = self.engine.generate([jobs[i][2] for i in by_verifier], params)
            for i, result in zip(by_verifier, results):
                out[i] = list(result.token_ids)
        for i, job in enumerate(jobs):
            if job[3] == "student":
                out[i] = self._sample_student(
                    job[2], int(unit_draw(cfg.seed, job[0], job[1], "seed") * 2**31)
                )
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _sample_student(self, prompt_ids: list[int], seed: int) -> list[int]:
        """The student's sampled response (stopping at the verifier's end-of-sequence tokens)."""
        torch.manual_seed(seed)
        eos = sorted(self.engine.eos_ids)
        input_ids = torch.tensor([prompt_ids], device=self.engine.device)
        output = self.student.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=self.config.student_temperature,
            top_k=0,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,
        )
        return output[0, len(prompt_ids) :].tolist()

"""Settings of a batch generation job: its sampling defaults, the Ray Data actor pool, the input's shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine_config import EngineConfig
from actors.messages import SamplingParams
from pipelines.common.storage import StoreConfig

FORMATS = ("auto", "parquet", "jsonl")


@dataclass
class BatchConfig:
    """How a batch job reads its input and sizes its pool of engine actors.

    Attributes:
        format: input format: ``auto`` (from the file suffix: .parquet/.pq, .jsonl/.json),
            ``parquet`` or ``jsonl``.
        rows_per_shard: input rows per output file. A shard is the unit of resumption: a re-run
            skips the shards whose output file exists. Changing it for an existing output is
            refused (the shards would overlap).
        batch_size: rows handed to one engine actor per call; the engine decodes up to
            ``engine.max_batch_size`` of them together and admits the rest as slots free up.
        min_actors: engine actors the pool keeps (each holds a verifier and a drafter).
        max_actors: engine actors the pool may grow to while input is waiting.
        tasks_per_actor: batches queued on one actor at a time (hides the hand-over gap).
        num_cpus: CPUs each engine actor reserves (Ray also sets its thread count from this).
        num_gpus: GPUs each engine actor reserves (0 on CPU).
        accelerator_type: Ray accelerator type each engine actor needs (e.g. ``A10G``); empty: any.
        resources: extra custom Ray resources per engine actor (e.g. ``{verifier_gpu: 1}``).
        id_column: column holding the row's id; the output's ``id`` column has its type
            (integers stay integers: ``pipelines/batch/rows.py``). Rows without one get
            ``FILE:ROW`` when ids are strings (or no file has the column), a null id when integers.
        prompt_column: column holding a plain prompt (wrapped in the chat template when ``chat``).
        messages_column: column holding chat messages (a list of ``{role, content}``); it wins over
            the prompt when a row has both.
    """

    format: str = "auto"
    rows_per_shard: int = 1000
    batch_size: int = 32
    min_actors: int = 1
    max_actors: int = 1
    tasks_per_actor: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator_type: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    id_column: str = "id"
    prompt_column: str = "prompt"
    messages_column: str = "messages"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"batch.format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        for key in ("rows_per_shard", "batch_size", "min_actors", "tasks_per_actor"):
            if getattr(self, key) < 1:
                raise ValueError(f"batch.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_actors < self.min_actors:
            raise ValueError(
                f"batch.max_actors ({self.max_actors}) must be >= batch.min_actors ({self.min_actors})"
            )
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("batch.num_cpus and batch.num_gpus must be >= 0")


@dataclass
class BatchJobConfig:
    """Settings of a batch generation job (``tandem generate`` with ``input=`` and ``output=``).

    Attributes:
        engine: the model, drafter and engine settings.
        chat: wrap plain prompts in the model's chat template.
        max_new_tokens: generated tokens at most.
        temperature: 0 for greedy; otherwise sampling temperature.
        top_p: nucleus sampling mass.
        top_k: keep the k most likely tokens (0 = all).
        seed: sampling seed.
        stop: strings that end generation.
        input: the prompts: Parquet or JSONL, a file, a folder or a glob, local or ``s3://``.
            Rows hold ``prompt`` or chat ``messages``, optionally ``id`` and sampling columns
            (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``) that
            override the values above.
        output: the output folder (local or ``s3://``): one Parquet file per shard.
        batch: the shards and the engine actor pool.
        s3: object-store endpoint and credentials (default: the standard AWS variables).
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    chat: bool = True
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    input: str = ""
    output: str = ""
    batch: BatchConfig = field(default_factory=BatchConfig)
    s3: StoreConfig = field(default_factory=StoreConfig)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop),
            seed=self.seed,
        )

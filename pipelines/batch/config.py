"""Settings of a batch generation job: the Ray Data actor pool, the input's shape, the object store."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        id_column: column holding the row's id; rows without one get ``FILE:ROW``.
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
class StoreConfig:
    """Object-store access for ``s3://`` paths. An empty field falls back to the standard AWS
    environment variable named on it, then to the AWS SDK's own chain (config files, instance role).

    Attributes:
        endpoint_url: an S3-compatible endpoint, e.g. ``http://127.0.0.1:9000`` (MinIO, moto);
            ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``.
        region: ``AWS_REGION``, then ``AWS_DEFAULT_REGION``.
        access_key_id: ``AWS_ACCESS_KEY_ID``.
        secret_access_key: ``AWS_SECRET_ACCESS_KEY``.
        session_token: ``AWS_SESSION_TOKEN``.
        anonymous: unsigned requests (public buckets).
    """

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    anonymous: bool = False

    def __post_init__(self) -> None:
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(
                f"s3.endpoint_url must start with http:// or https://, got {self.endpoint_url!r}"
            )
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("s3.access_key_id and s3.secret_access_key go together")

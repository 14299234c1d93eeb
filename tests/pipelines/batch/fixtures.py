"""Helpers for the batch generation tests (the S3 server also serves the other jobs' tests): a
local S3 server (moto), a tiny chat model folder, the 50-prompt dataset with 3 bad rows, an
engine worker that waits to be killed, and a local Ray head started by ``cluster/local_head.sh``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).parents[3]
BUCKET = "tandem-batch"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"

# Rows that cannot be generated, by index: no prompt at all, a prompt beyond the context, and chat
# messages whose content has the wrong type.
BAD_ROWS = {7: "missing prompt", 23: "beyond the context", 41: "messages[0].content must be a string"}
CHAT_ROWS = (3, 30)
SHORT_ROWS = (10, 11)  # rows with their own max_new_tokens

DATASET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("max_new_tokens", pa.int64()),
    ]
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator:
    """A moto S3 server on 127.0.0.1 holding an empty ``bucket``: yields a boto3 client for it,
    with the server's URL as its ``endpoint`` attribute (for ``s3.endpoint_url`` or
    ``AWS_ENDPOINT_URL``), and stops the server on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"]}
        keys["aws_secret_access_key"] = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        client = boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_REGION"], **keys)
        client.create_bucket(Bucket=bucket)
        client.endpoint = endpoint
        yield client
    finally:
        server.stop()


def save_tiny_chat_model(path: Path, make_tiny, tokenizer) -> Path:
    """The conftest's tiny random Llama and word-level tokenizer, with a chat template that joins
    the messages' contents (so chat and plain prompts tokenize alike)."""
    from transformers import AutoTokenizer

    make_tiny(seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    own = AutoTokenizer.from_pretrained(path)  # a copy: the session's tokenizer stays template-free
    own.chat_template = CHAT_TEMPLATE
    own.save_pretrained(path)
    return path


def dataset_rows(n: int = 50, seed: int = 0) -> list[dict]:
    """``n`` prompts of the tiny vocabulary (ids ``q00``...), with the rows of :data:`BAD_ROWS`,
    :data:`CHAT_ROWS` and :data:`SHORT_ROWS`."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        words = " ".join(f"t{rng.randrange(62)}" for _ in range(rng.randrange(3, 12)))
        row = {"id": f"q{index:02d}", "prompt": words, "messages": None, "max_new_tokens": None}
        if index in CHAT_ROWS:
            row |= {"prompt": None, "messages": [{"role": "user", "content": words}]}
        if index in SHORT_ROWS:
            row["max_new_tokens"] = 3
        rows.append(row)
    rows[7]["prompt"] = None
    rows[23]["prompt"] = " ".join(["t5"] * 300)
    rows[41] |= {"prompt": None, "messages": [{"role": "user", "content": None}]}
    return rows


def parquet_bytes(rows: list[dict], row_group_size: int = 16) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=DATASET_SCHEMA), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def prompt_text(row: dict) -> str:
    """The text a good row asks about (its prompt, or its single chat message's content)."""
    return row["messages"][0]["content"] if row["messages"] else row["prompt"]


def read_output(s3, prefix: str) -> tuple[list[dict], dict[str, str]]:
    """Every row of the Parquet files under ``prefix``, and each object's ETag by key."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    etags = {item["Key"]: item["ETag"] for item in listing}
    rows = []
    for key in sorted(etags):
        if key.endswith(".parquet"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return rows, etags


def worker_that_waits_to_be_killed(marker: Path, hold_s: float = 300.0) -> type:
    """An :class:`~pipelines.batch.worker.EngineWorker` for Ray Data whose first batch (the first
    of all its actors) writes the actor's pid to ``marker`` and holds that batch until the process
    is killed (or ``hold_s`` passes): a test that kills the pid in ``marker`` kills an actor that
    has provably started a batch and not finished it. Every other batch, the replacement actor's
    included, runs at once (the marker exists).

    The class is made in a function so that Ray pickles it by value, ``marker`` with it.
    """
    from pipelines.batch.worker import EngineWorker

    class WaitsToBeKilled(EngineWorker):
        def __call__(self, batch):
            import os
            import time

            draft = f"{marker}.{os.getpid()}"
            with open(draft, "w") as out:
                out.write(str(os.getpid()))
            try:
                os.link(draft, marker)  # atomic: exactly one batch of the job claims the marker
            except FileExistsError:
                return super().__call__(batch)
            finally:
                os.unlink(draft)
            time.sleep(hold_s)  # the test kills this process here, mid-batch
            return super().__call__(batch)

    return WaitsToBeKilled


class LocalHead:
    """A Ray head started with ``cluster/local_head.sh`` on free ports in a temp dir, stopped by
    signalling the process it started (``ray start --block`` then stops its own Ray processes)."""

    def __init__(self, num_cpus: int = 4):
        self.temp_dir = tempfile.mkdtemp(prefix="tandem-ray-")
        self.dashboard_port = free_port()
        self.env = os.environ | {
            "RAY_HEAD_PORT": str(free_port()),
            "RAY_DASHBOARD_PORT": str(self.dashboard_port),
            "RAY_CLIENT_PORT": str(free_port()),
            "RAY_AGENT_PORT": str(free_port()),
            "RAY_TEMP_DIR": self.temp_dir,
            "RAY_NUM_CPUS": str(num_cpus),
            "RAY_AUTH_MODE": "token",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = Path(self.temp_dir) / "head.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> LocalHead:
        extra = [f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}"]
        extra.append(f"--runtime-env-agent-port={free_port()}")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["bash", str(REPO / "cluster" / "local_head.sh"), *extra],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.dashboard_up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Ray head did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def dashboard_up(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.address}/api/version", timeout=1)
        except urllib.error.HTTPError:
            return True  # answering (token auth refuses anonymous requests)
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session this head was started in
            self.process.wait(10)

    def submit(
        self, args: list[str], env_vars: dict[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir . -- ARGS`` from the repository root; waits for the job."""
        runtime_env = json.dumps({"env_vars": env_vars})
        command = ["ray", "job", "submit", f"--address={self.address}", "--working-dir", "."]
        command += ["--runtime-env-json", runtime_env, "--", *args]
        return subprocess.run(
            command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

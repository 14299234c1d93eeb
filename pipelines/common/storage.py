"""Where jobs keep their files: local paths or ``s3://`` URIs, through pyarrow's filesystems.

The S3 endpoint and credentials come from :class:`StoreConfig`, then from the standard AWS
environment variables. Files are committed atomically: a reader never sees half an output file.
"""

from __future__ import annotations

import fnmatch
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


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


OBJECT_STORES = ("s3", "gcs")  # an object appears only once its upload completes


def resolve(uri: str, store: StoreConfig) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of ``uri`` (``s3://bucket/key``, a local path, or
    any URI pyarrow knows, such as ``gs://``)."""
    if not uri:
        raise ValueError("empty path")
    if uri.startswith("s3://"):
        return s3_filesystem(store), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def s3_filesystem(store: StoreConfig) -> pafs.S3FileSystem:
    """An S3 filesystem with the endpoint, region and credentials of ``store`` or the environment."""
    env = os.environ.get
    endpoint = store.endpoint_url or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL") or ""
    # Delayed open: a file smaller than one part goes up in a single PutObject (a shard file
    # usually is), not a multipart upload; either way the object appears only when complete.
    options: dict = {"anonymous": store.anonymous, "allow_delayed_open": True}
    if endpoint:
        parsed = urlparse(endpoint)
        options |= {"endpoint_override": parsed.netloc + parsed.path.rstrip("/"), "scheme": parsed.scheme}
    region = store.region or env("AWS_REGION") or env("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if store.access_key_id:
        options |= {"access_key": store.access_key_id, "secret_key": store.secret_access_key}
        if store.session_token:
            options["session_token"] = store.session_token
    return pafs.S3FileSystem(**options)


def list_files(fs: pafs.FileSystem, path: str) -> tuple[str, list[str]]:
    """The folder ``path`` is in or names, and the files ``path`` names, sorted: itself if a file,
    the files under it if a directory (prefix), or the matches of a glob in its last part
    (``bucket/prompts/*.parquet``). Names starting with ``_`` or ``.`` (markers, temporary files)
    are left out of listings."""
    folder, pattern = path, None
    if any(ch in os.path.basename(path) for ch in "*?["):
        folder, pattern = os.path.dirname(path), os.path.basename(path)
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.File and pattern is None:
        return os.path.dirname(path), [path]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"input does not exist: {path}")
    found = fs.get_file_info(pafs.FileSelector(folder, recursive=pattern is None))
    files = [
        item.path
        for item in found
        if item.type == pafs.FileType.File
        and not os.path.basename(item.path).startswith(("_", "."))
        and (pattern is None or fnmatch.fnmatch(os.path.basename(item.path), pattern))
    ]
    if not files:
        raise FileNotFoundError(f"no input files at {path}")
    return folder, sorted(files)


def list_names(fs: pafs.FileSystem, folder: str) -> set[str]:
    """Base names of the files directly in ``folder`` (empty when it does not exist yet)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return set()
    selector = pafs.FileSelector(folder, allow_not_found=True)
    return {
        os.path.basename(item.path) for item in fs.get_file_info(selector) if item.type == pafs.FileType.File
    }


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    """The content of ``path``, or None when there is no such file."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it.

    Object stores publish an object only when its upload completes, so it is written in place;
    elsewhere it goes to a hidden temporary name in the same folder, then is renamed.
    """
    folder = os.path.dirname(path)
    if fs.type_name in OBJECT_STORES:
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    fs.create_dir(folder, recursive=True)
    temporary = f"{folder}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(temporary) as stream:
            stream.write(data)
        fs.move(temporary, path)
    finally:
        if fs.get_file_info(temporary).type == pafs.FileType.File:
            fs.delete_file(temporary)


def read_safetensors(path: str) -> dict:
    """A state dict from a local ``.safetensors`` file or every such file in a folder."""
    from safetensors.torch import load_file

    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights at {path}")
    state: dict = {}
    for file in files:
        state |= load_file(file)
    return state

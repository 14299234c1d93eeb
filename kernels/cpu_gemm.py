"""Few-row float32 products on x86 CPUs: ``x @ w.T`` for a handful of rows, streaming ``w`` once.

MKL's float32 GEMM is poor at the shapes of a verifier step (1-32 rows against every weight
matrix): its cost grows with the row count although the weights, which dominate the memory
traffic, are the same. ``cpu_gemm.c`` reads each weight row once for up to 8 rows of ``x`` and
splits the weight rows over OpenMP threads. SmolLM2-135M's forward and LM head over a 300-token
prefix, on the 2-core CPU of docs/benchmarks.md, the two products alternating in one process:
1 / 2 / 4 / 8 / 16 rows 54.1 / 61.0 / 54.3 / 96.0 / 123.4 ms through MKL (with
actors/cpu_linear.py's transposed product), 41.2 / 46.2 / 47.1 / 59.5 / 91.4 ms here; 24 rows
151.6 → 140.9 ms, 32 rows 192.0 → 191.9 ms: no gain left, so above :data:`MAX_ROWS` the stock
product runs.

The C file is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into
``$TANDEM_CACHE/kernels`` (default ``~/.cache/tandem/kernels``), once per source version. It is
used only where it can share PyTorch's OpenMP runtime (Linux, where torch ships ``libgomp.so.1``):
two runtimes would fight over the cores. Anywhere else, without a compiler, without AVX2 and FMA,
or with ``TANDEM_CPU_KERNEL=0``, :func:`few_rows_gemm` is None and the callers keep PyTorch's
product; the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 32  # at 32 rows the two products cost the same (docs/benchmarks.md)
SOURCE = Path(__file__).with_name("cpu_gemm.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]

#: (rows [M, K], weight [N, K]) → [M, N], both float32 on the CPU
Gemm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def few_rows_gemm() -> Gemm | None:
    """The compiled product, or None where it cannot run here (the reason logged once)."""
    reason = unusable_reason()
    if reason is None:
        try:
            return _bind(ctypes.CDLL(str(compiled_library())))
        except (OSError, subprocess.CalledProcessError) as error:
            reason = f"could not build {SOURCE.name}: {error} {getattr(error, 'stderr', '') or ''}".strip()
    log.info("few-row CPU kernel not used (%s): PyTorch's product runs", reason)
    return None


def unusable_reason() -> str | None:
    if os.environ.get("TANDEM_CPU_KERNEL", "1") == "0":
        return "TANDEM_CPU_KERNEL=0"
    if not sys.platform.startswith("linux"):
        return f"built for Linux, this is {sys.platform}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"needs AVX2 and FMA, this CPU has {torch.backends.cpu.get_cpu_capability()}"
    if compiler() is None:
        return "no C compiler ($CC or cc)"
    return None


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compiled_library() -> Path:
    """The shared library built from :data:`SOURCE`, compiled when this version is not cached."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem")) / "kernels"
    library = folder / f"cpu_gemm-{digest}.so"
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:  # processes may build at once
            built = Path(scratch) / library.name
            subprocess.run(
                [compiler(), *FLAGS, str(SOURCE), "-o", str(built)],
                check=True,
                capture_output=True,
                text=True,
            )
            os.replace(built, library)
    return library


def _bind(library: ctypes.CDLL) -> Gemm | None:
    runtimes = openmp_runtimes()
    if len(runtimes) > 1:
        log.info("few-row CPU kernel not used: it would run beside a second OpenMP runtime %s", runtimes)
        return None
    function = library.few_rows_gemm
    function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3
    function.restype = None

    def gemm(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows, weight = rows.contiguous(), weight.contiguous()  # no copies for a layer's own tensors
        (count, width), outputs = rows.shape, weight.shape[0]
        if weight.shape[1] != width or rows.dtype != torch.float32 or weight.dtype != torch.float32:
            raise ValueError(
                f"float32 rows of width {width} and weight, got {rows.dtype} and {weight.dtype} "
                f"{tuple(weight.shape)}"
            )
        out = rows.new_empty(count, outputs)
        function(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), count, outputs, width)
        return out

    return gemm


def openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries mapped into this process."""
    with open("/proc/self/maps") as maps:
        return {
            line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line or "libomp" in line
        }

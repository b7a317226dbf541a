"""The C streaming-read bound (bench/stream_read.c), compiled at bench time.

``load()`` compiles stream_read.c once into ``${POPPINS_CACHE:-~/.cache/poppins}/bench/`` (the
file name carries a hash of the source and flags) with ``cc -O2 -mavx2 -fopenmp`` (no
``-mavx2`` when the CPU lacks it) and returns a ``StreamRead`` whose ``gbps(buf, threads)``
times one pass over a NumPy buffer.  Not part of the package: the benchmarks use it to state
each engine's share of the read bandwidth measured in the same run.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "stream_read.c")


def cache_dir() -> str:
    base = os.environ.get("POPPINS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "poppins")
    d = os.path.join(base, "bench")
    os.makedirs(d, exist_ok=True)
    return d


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """lscpu's model name (the CPU every figure names)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import platform

    return platform.processor() or platform.machine()


class StreamRead:
    def __init__(self, lib: ctypes.CDLL):
        self._fn = lib.pp_stream_read
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._fn.restype = ctypes.c_uint64

    @staticmethod
    def buffer(nbytes: int) -> np.ndarray:
        """A 64-byte aligned, touched buffer of nbytes (rounded down to 128)."""
        nbytes -= nbytes % 128
        raw = np.empty(nbytes + 64, np.uint8)
        off = (-raw.ctypes.data) % 64
        buf = raw[off:off + nbytes]
        buf[:] = 1
        return buf

    def seconds(self, buf: np.ndarray, threads: int = 1) -> float:
        t0 = time.perf_counter()
        self._fn(buf.ctypes.data, buf.nbytes, int(threads))
        return time.perf_counter() - t0

    def gbps(self, buf: np.ndarray, threads: int = 1) -> float:
        return buf.nbytes / self.seconds(buf, threads) / 1e9


def load() -> StreamRead:
    flags = ["-O2", "-fPIC", "-shared", "-fopenmp"]
    if "avx2" in cpu_flags():
        flags.insert(1, "-mavx2")
    cc = os.environ.get("CC", "cc")
    with open(SRC, "rb") as f:
        tag = hashlib.sha256(f.read() + " ".join([cc] + flags).encode()).hexdigest()[:12]
    so = os.path.join(cache_dir(), f"stream_read-{tag}.so")
    if not os.path.exists(so):
        tmp = f"{so}.{os.getpid()}.tmp"
        subprocess.run([cc, *flags, "-o", tmp, SRC], check=True)
        os.replace(tmp, so)
    return StreamRead(ctypes.CDLL(so))

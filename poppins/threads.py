"""The one place that decides how many threads poppins uses.

``default_threads()`` is the number of physical cores available to this process (hyper-
threads share the SIMD units our kernels saturate, so they rarely help), overridable with
``POPPINS_THREADS``.  Callers pass the chosen count explicitly to every kernel; kernels never
read the environment themselves.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux: from sysfs)."""
    cpus = _affinity()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
            with open(f"{base}/physical_package_id") as f:
                pkg = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((pkg, core))
    return max(1, len(cores) or len(cpus))


def max_threads() -> int:
    """The most threads poppins runs: 4 x the CPUs this process may use, at most 256.

    More threads than CPUs only time-slice (each OpenMP worker also costs a stack and a slot in
    every parallel region), and an absurd count (``-t 65536``) would exhaust the process; a
    larger request is clamped to this, with a note on stderr (:func:`resolve_threads`)."""
    return max(1, min(MAX_THREADS_CAP, 4 * max(1, len(_affinity()) or (os.cpu_count() or 1))))


#: the hard upper bound of :func:`max_threads`
MAX_THREADS_CAP = 256
_clamp_noted: set = set()


def _clamp(n: int, source: str) -> int:
    hi = max_threads()
    if n <= hi:
        return n
    if (n, source) not in _clamp_noted:
        _clamp_noted.add((n, source))
        sys.stderr.write(f"poppins: {source} asks for {n} threads; using {hi} (at most 4 x the "
                         f"CPUs this process may use, and never more than {MAX_THREADS_CAP})\n")
    return hi


def default_threads() -> int:
    """Threads to use when the user did not say: ``POPPINS_THREADS`` or the physical cores."""
    env = os.environ.get("POPPINS_THREADS", "").strip()
    if env:
        try:
            n = int(env) if env.isascii() and len(env) <= 12 else 0
        except ValueError:
            n = 0
        if n > 0:
            return _clamp(n, "POPPINS_THREADS")
    return physical_cores()


# --------------------------------------------------------------------------- "go parallel" cut-offs
# The one definition of when work is worth more than one thread: below these sizes a kernel
# runs on one thread, because waking sleeping (OMP_WAIT_POLICY=PASSIVE) OpenMP workers costs
# ~5-20 us, more than small work takes.  setup.py passes PARALLEL_MIN_ELEMENTS to the C code as
# POPPINS_PAR_MIN_ELEMENTS (ext/common/poppins_common.h: PP_PAR_MIN_ELEMENTS), and every
# compiled module reports the value it was built with (build_info()["par_min_elements"]).

#: element-wise kernels (quantize, RMSNorm, RoPE, softmax rows, repacking ...): elements touched
PARALLEL_MIN_ELEMENTS = 1 << 15
#: ternary matrix products (poppins.engine.kernels, the runtime's prefill): multiply-adds m*k*n
PARALLEL_MIN_MACS = 1 << 18


#: how a decode session with threads > 1 uses them: "auto" (each step on the team or on one
#: thread, whichever is faster at the time: see eng_decode_step in ext/engine/engine_step.c) or
#: "fixed" (every step on the team: tests of the team path, benchmarks of it)
TEAM_POLICIES = ("auto", "fixed")


def team_policy(requested: "str | None" = None) -> str:
    """The decode sessions' team policy: ``requested``, else ``POPPINS_TEAM``, else "auto"."""
    v = requested if requested is not None else os.environ.get("POPPINS_TEAM", "").strip()
    v = (v or "auto").lower()
    if v not in TEAM_POLICIES:
        from .errors import PoppinsError
        raise PoppinsError(f"unknown team policy {v!r} (POPPINS_TEAM): use "
                           + " or ".join(TEAM_POLICIES))
    return v


def resolve_threads(requested: "int | None") -> int:
    """A user's ``-t`` value (None or <= 0 means the default) -> a positive thread count, at
    most :func:`max_threads` (a larger request is clamped, with a note on stderr)."""
    if requested is None or requested <= 0:
        return default_threads()
    return _clamp(int(requested), "the thread count")


def rank_default_threads(ranks_on_machine: int) -> int:
    """The default thread count of one of ``ranks_on_machine`` processes sharing this machine
    (MPI ranks): ``POPPINS_THREADS`` when set, else its share of the machine's physical cores,
    at most the cores it may run on (a launcher may bind it to fewer), at least 1."""
    if os.environ.get("POPPINS_THREADS", "").strip():
        return default_threads()
    machine = len({_core_of(cpu) for cpu in range(os.cpu_count() or 1)}) or 1
    return max(1, min(physical_cores(), machine // max(1, int(ranks_on_machine))))


def _core_of(cpu: int):
    base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    try:
        with open(f"{base}/physical_package_id") as f, open(f"{base}/core_id") as g:
            return f.read().strip(), g.read().strip()
    except OSError:
        return cpu


# --------------------------------------------------------------------------- BLAS threads
# GEMMs go to the BLAS numpy is linked with.  Its thread count is set here and only here,
# through the library's own C API (ctypes on the already-loaded shared object; no dependency).
_BLAS_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                   "openblas_set_num_threads64_", "openblas_set_num_threads")
_BLAS_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                   "openblas_get_num_threads64_", "openblas_get_num_threads")


@lru_cache(maxsize=1)
def blas_library():
    """(ctypes.CDLL, path) of the OpenBLAS numpy loaded, or (None, None) if none is found."""
    import ctypes

    import numpy  # noqa: F401  (loads the BLAS)

    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and "blas" in parts[-1].lower() and parts[-1] not in paths:
                    paths.append(parts[-1])
    except OSError:
        pass
    if not paths:  # macOS & co: look next to numpy
        import glob

        base = os.path.dirname(os.path.dirname(numpy.__file__))
        for pat in ("numpy/.dylibs/*blas*", "numpy.libs/*blas*", "scipy_openblas*/lib/*blas*"):
            paths += glob.glob(os.path.join(base, pat))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if any(hasattr(lib, n) for n in _BLAS_SET_NAMES):
            return lib, path
    return None, None


@lru_cache(maxsize=1)
def _blas_api():
    """(set_fn, get_fn) of the OpenBLAS numpy loaded, or (None, None) if none is found."""
    import ctypes

    lib, _ = blas_library()
    if lib is None:
        return None, None
    setf = next((getattr(lib, n) for n in _BLAS_SET_NAMES if hasattr(lib, n)), None)
    getf = next((getattr(lib, n) for n in _BLAS_GET_NAMES if hasattr(lib, n)), None)
    setf.argtypes = [ctypes.c_int]
    setf.restype = None
    if getf is not None:
        getf.argtypes = []
        getf.restype = ctypes.c_int
    return setf, getf


def get_blas_threads() -> "int | None":
    """The BLAS thread count, or None when poppins cannot control the BLAS."""
    _, getf = _blas_api()
    return int(getf()) if getf is not None else None


def set_blas_threads(n: int) -> bool:
    """Set the BLAS (OpenBLAS) thread count; returns False when the BLAS is not controllable."""
    setf, _ = _blas_api()
    if setf is None:
        return False
    setf(max(1, int(n)))
    return True


class blas_threads:
    """Context manager: ``with blas_threads(n): ...`` runs GEMMs on n threads, then restores."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.prev = None

    def __enter__(self):
        self.prev = get_blas_threads()
        if self.prev != self.n:
            set_blas_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.prev is not None and self.prev != self.n:
            set_blas_threads(self.prev)
        return False

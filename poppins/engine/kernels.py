"""The thin Python layer over the ternary kernels: checks, path choice, threads.

Every function here checks dtype and shape, makes inputs C-contiguous, and calls the
compiled ``poppins._ternary`` (or, when it is missing or POPPINS_NO_EXT=1, the NumPy
reference in ``reference.py`` with the same signatures).  Thread counts are explicit
arguments (None = ``poppins.threads.default_threads()``); the kernels never read the
environment.

Kernel path: ``kernel=`` argument, else ``POPPINS_KERNEL`` (scalar | avx2 | avx512 | neon |
neondot), else the best path the CPU runs.  ``neon`` is the plain Advanced SIMD path and
``neondot`` the one using the Armv8.2 dot-product instructions.  An unknown name, or one this
build/CPU cannot run, raises PoppinsError.  With the NumPy reference backend the choice is
validated but has no effect.

OpenMP waiting: ``poppins.native`` puts ``OMP_WAIT_POLICY=PASSIVE`` into the environment
(unless the user set it) before the first extension loads libgomp, so idle OpenMP workers
sleep instead of spinning; the kernels use one parallel region per call with static row
ranges, and products smaller than ``PARALLEL_MIN_WORK`` run on one thread (waking sleeping
workers costs more than they take).

Kernel layout: the model file stores codes in the ``rows`` layout (packing.py); at load time
``PackedTernary.from_tensor`` repacks them into ``b256`` v1 (ext/ternary/ternary.h).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..native import KERNEL_PATHS
from ..threads import PARALLEL_MIN_MACS, resolve_threads
from . import reference
from .packing import TernaryTensor, pack_codes

#: every path name the kernels know, in id order (poppins.native's one list)
KERNEL_NAMES = KERNEL_PATHS
K_MAX = reference.K_MAX
LAYOUT = "b256"
LAYOUT_VERSION = 1

#: products with fewer multiply-adds (m * k * n) than this run on one thread: waking sleeping
#: (passive) OpenMP workers costs ~5-20 us, more than a small matrix-vector product takes
#: (poppins.threads holds the one definition).
PARALLEL_MIN_WORK = PARALLEL_MIN_MACS

_backend_mod = None


def _backend():
    """The compiled module, or the reference module (once per process)."""
    global _backend_mod
    if _backend_mod is None:
        from .. import native

        # applies POPPINS_KERNEL (native's one rule); a bad request is raised by every call
        # (resolve_kernel), not here
        mod = native.load("ternary", check_kernel=False)
        _backend_mod = mod if mod is not None else reference
    return _backend_mod


def reset_backend() -> None:
    """Forget the chosen backend (tests use this after changing POPPINS_NO_EXT)."""
    global _backend_mod
    _backend_mod = None


def is_compiled() -> bool:
    return _backend() is not reference


def available_kernels() -> list:
    """Paths compiled in and runnable on this CPU, best first ([] for the reference)."""
    return list(_backend().available())


def resolve_kernel(kernel: Optional[str] = None) -> int:
    """Kernel id for ``kernel`` (or POPPINS_KERNEL, or the best path: -1); the rule and its
    errors are poppins.native's (requested_kernel / family_kernel)."""
    from .. import native

    name, _ = native.requested_kernel(kernel)
    mod = _backend()
    if name is None or mod is reference:
        return -1
    return mod.kernel_id(native.family_kernel("ternary", mod, kernel))


def active_kernel(kernel: Optional[str] = None) -> str:
    """Name of the path a call with ``kernel`` would use ("reference" without the extension)."""
    mod = _backend()
    if mod is reference:
        resolve_kernel(kernel)
        return "reference"
    kid = resolve_kernel(kernel)
    return mod.default_kernel() if kid < 0 else KERNEL_NAMES[kid]


def kernel_info() -> dict:
    mod = _backend()
    info = dict(mod.build_info())
    info["backend"] = "reference" if mod is reference else "compiled"
    return info


class PackedTernary:
    """A ternary matrix (m, k) in the kernels' b256 layout, with its absmean scale."""

    __slots__ = ("data", "m", "k", "scale")

    def __init__(self, data: np.ndarray, m: int, k: int, scale: float):
        if not 0 <= k <= K_MAX:
            raise ValueError(f"k={k} is out of range (0..{K_MAX})")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[0] != m \
                or data.shape[1] < reference.row_bytes(k) or not data.flags.c_contiguous:
            raise ValueError("PackedTernary data must be C-contiguous uint8 (m, row_bytes(k))")
        self.data, self.m, self.k, self.scale = data, int(m), int(k), float(scale)

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.m, self.k)

    @classmethod
    def from_tensor(cls, t: TernaryTensor, *, threads: Optional[int] = None) -> "PackedTernary":
        """Repack a file-layout tensor (e.g. a read-only memmap) into the kernel layout."""
        m, k = t.shape
        if not 0 <= k <= K_MAX:
            raise ValueError(f"k={k} is out of range (0..{K_MAX})")
        data = np.empty((m, reference.row_bytes(k)), dtype=np.uint8)
        codes = np.ascontiguousarray(t.codes)
        invalid = _backend().repack(codes, k, data, resolve_threads(threads))
        if invalid:
            raise ValueError(f"{invalid} invalid 2-bit codes (0b11) in a ternary tensor")
        return cls(data, m, k, t.scale)

    @classmethod
    def from_values(cls, t: np.ndarray, scale: float = 1.0, *,
                    threads: Optional[int] = None) -> "PackedTernary":
        t = np.asarray(t)
        return cls.from_tensor(TernaryTensor(pack_codes(t), t.shape, scale), threads=threads)


def _as_packed(w) -> PackedTernary:
    if isinstance(w, PackedTernary):
        return w
    if isinstance(w, TernaryTensor):
        return PackedTernary.from_tensor(w)
    raise TypeError(f"expected PackedTernary or TernaryTensor, got {type(w).__name__}")


def _threads_for(threads: Optional[int], work: int) -> int:
    return 1 if work < PARALLEL_MIN_WORK else resolve_threads(threads)


def _int8(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError(f"{what} must be int8, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {x.shape}")
    return np.ascontiguousarray(x)


def matvec_int(w, x: np.ndarray, *, threads: Optional[int] = None,
               kernel: Optional[str] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact ``y[r] = sum_i t[r, i] * x[i]`` as int32 (m,), x int8 (k,)."""
    w = _as_packed(w)
    x = _int8(x, 1, "x")
    if x.shape[0] != w.k:
        raise ValueError(f"x has {x.shape[0]} elements, the matrix has k={w.k}")
    kid = resolve_kernel(kernel)
    y = np.empty(w.m, dtype=np.int32) if out is None else out
    if y.dtype != np.int32 or y.shape != (w.m,) or not y.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous int32 of shape {(w.m,)}")
    _backend().matvec(w.data, w.k, x, y, _threads_for(threads, w.m * w.k), kid)
    return y


def matmul_int(w, x: np.ndarray, *, threads: Optional[int] = None,
               kernel: Optional[str] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact ``y[c, r] = sum_i t[r, i] * x[c, i]`` as int32 (n, m), x int8 (n, k)."""
    w = _as_packed(w)
    x = _int8(x, 2, "x")
    if x.shape[1] != w.k:
        raise ValueError(f"x has {x.shape[1]} columns, the matrix has k={w.k}")
    kid = resolve_kernel(kernel)
    n = x.shape[0]
    y = np.empty((n, w.m), dtype=np.int32) if out is None else out
    if y.dtype != np.int32 or y.shape != (n, w.m) or not y.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous int32 of shape {(n, w.m)}")
    _backend().matmul(w.data, w.k, x, y, _threads_for(threads, w.m * w.k * n), kid)
    return y


def quantize_activations(x: np.ndarray, *, threads: Optional[int] = None
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token int8 quantization (decisions.md): x float32 (k,) or (n, k) ->
    (q int8 of the same shape, scales float32 (n,) or a 0-d array), s = 127 / max(max|x|, 1e-5)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
    x2 = np.ascontiguousarray(x.reshape(1, -1) if x.ndim == 1 else x)
    q = np.empty(x2.shape, dtype=np.int8)
    s = np.empty(x2.shape[0], dtype=np.float32)
    _backend().quantize_rows(x2, q, s, resolve_threads(threads))
    if x.ndim == 1:
        return q.reshape(-1), s.reshape(())
    return q, s


def ternary_linear(w, x: np.ndarray, *, threads: Optional[int] = None,
                   kernel: Optional[str] = None) -> np.ndarray:
    """y = (sum t * x_q) * w_scale / x_scale for float32 x (k,) or (n, k) -> (m,) or (n, m)."""
    w = _as_packed(w)
    q, s = quantize_activations(x, threads=threads)
    if q.ndim == 1:
        acc = matvec_int(w, q, threads=threads, kernel=kernel)
        return (acc.astype(np.float32) * (np.float32(w.scale) / s)).astype(np.float32)
    acc = matmul_int(w, q, threads=threads, kernel=kernel)
    return (acc.astype(np.float32) * (np.float32(w.scale) / s)[:, None]).astype(np.float32)

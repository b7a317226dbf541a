# cython: language_level=3
"""Compiled ternary kernels (poppins._ternary): packed 2-bit weights x int8 -> exact int32.

Typed-memoryview wrappers over ext/ternary/*.c, GIL released.  The checks of dtype, shape
and contiguity live in poppins.engine.kernels; the NumPy references with the same signatures
are in poppins.engine.reference.  Kernel ids: 0 scalar, 1 avx2, 2 avx512, 3 neon, 4 neondot;
-1 means the best path for this CPU.
"""
from libc.stdint cimport int8_t, uint8_t, int32_t, int64_t
from cpython.pycapsule cimport PyCapsule_New
from ternary_api cimport *

include "poppins_cpu.pxi"

BLOCK = TERN_BLOCK
BLOCK_BYTES = TERN_BLOCK_BYTES
K_MAX = TERN_K_MAX
LAYOUT = "b256"
LAYOUT_VERSION = TERN_LAYOUT_VERSION

tern_init()  # detect CPU features once, at import

#: The C API (ternary.h, tern_c_api) for other extension modules: the kernels are compiled
#: once, here; poppins._engine calls them through this table.
_C_API = PyCapsule_New(<void *>tern_get_c_api(), TERN_C_API_CAPSULE, NULL)

_default_kernel = tern_best_kernel()


def kernel_names():
    """All path names this module knows (available or not), in id order."""
    return [tern_kernel_name(i).decode() for i in range(TERN_NKERNELS)]


def available():
    """Names of the paths compiled in AND runnable on this CPU (best first)."""
    names = [tern_kernel_name(i).decode() for i in range(TERN_NKERNELS) if tern_kernel_available(i)]
    order = ["avx512", "avx2", "neondot", "neon", "scalar"]
    return sorted(names, key=order.index)


def kernel_id(str name):
    """Id of a path name, or -1 when the name is unknown."""
    for i in range(TERN_NKERNELS):
        if tern_kernel_name(i).decode() == name:
            return i
    return -1


def is_available(int kernel):
    return bool(tern_kernel_available(kernel))


def best_kernel():
    return tern_kernel_name(tern_best_kernel()).decode()


def set_default_kernel(int kernel):
    """The path used when a call passes kernel=-1 (the Python layer's POPPINS_KERNEL override)."""
    global _default_kernel
    if not tern_kernel_available(kernel):
        raise ValueError(f"kernel {kernel} is not available")
    _default_kernel = kernel


def default_kernel():
    return tern_kernel_name(_default_kernel).decode()


def build_info():
    """openmp, the default path ("kernel"), the runnable paths, the layout, and the CPU
    features each compiled path needs ("needs", checked by its dispatcher)."""
    needs = {}
    for i in range(TERN_NKERNELS):
        if tern_kernel_needs(i) >= 0:
            needs[tern_kernel_name(i).decode()] = _feature_names(tern_kernel_needs(i))
    return {"openmp": bool(poppins_build_openmp()),
            "kernel": tern_kernel_name(_default_kernel).decode(),
            "available": available(),
            "layout": f"b256 v{TERN_LAYOUT_VERSION}", "needs": needs,
            "par_min_elements": poppins_par_min_elements()}


def row_bytes(int64_t k):
    return tern_row_bytes(k)


def repack(const uint8_t[:, ::1] codes, int64_t k, uint8_t[:, ::1] out, int threads=1):
    """File layout (rows, 0b00/0b01/0b10 codes) -> kernel layout b256.  Returns the number of
    invalid 0b11 codes among the first k of each row."""
    cdef int64_t m = codes.shape[0], inv
    if out.shape[0] != m or codes.shape[1] < (k + 3) // 4 or out.shape[1] < tern_row_bytes(k):
        raise ValueError("repack: shape mismatch")
    if m == 0 or k == 0:
        return 0
    with nogil:
        inv = tern_repack_rows(&codes[0, 0], codes.shape[1], m, k, &out[0, 0], out.shape[1], threads)
    return inv


cdef int _run(const uint8_t[:, ::1] w, int64_t k, const int8_t *x, int64_t x_stride, int64_t n,
              int32_t *y, int64_t y_stride, int threads, int kernel) except -9:
    cdef int64_t m = w.shape[0]
    cdef int rc
    cdef const uint8_t *wp = &w[0, 0] if m > 0 else NULL
    if kernel < 0:
        kernel = _default_kernel
    if m > 0 and w.shape[1] < tern_row_bytes(k):
        raise ValueError("weights have fewer bytes per row than k needs")
    with nogil:
        rc = tern_matmul(wp, w.shape[1], m, k, x, x_stride, n, y, y_stride, threads, kernel)
    if rc == -1:
        raise ValueError(f"kernel {kernel} is not available on this CPU/build")
    if rc == -2:
        raise ValueError(f"k={k} is out of range (0..{TERN_K_MAX})")
    if rc == -3:
        raise MemoryError()
    return 0


def matvec(const uint8_t[:, ::1] w, int64_t k, const int8_t[::1] x, int32_t[::1] y,
           int threads=1, int kernel=-1):
    """y[r] = sum_i t[r, i] * x[i] (exact int32); w in the b256 kernel layout."""
    if x.shape[0] != k or y.shape[0] != w.shape[0]:
        raise ValueError("matvec: shape mismatch")
    cdef const int8_t *xp = &x[0] if k > 0 else NULL
    cdef int32_t *yp = &y[0] if y.shape[0] > 0 else NULL
    _run(w, k, xp, k, 1, yp, y.shape[0], threads, kernel)


def matmul(const uint8_t[:, ::1] w, int64_t k, const int8_t[:, ::1] x, int32_t[:, ::1] y,
           int threads=1, int kernel=-1):
    """y[c, r] = sum_i t[r, i] * x[c, i] (exact int32); x is (n, k), y is (n, m)."""
    cdef int64_t n = x.shape[0]
    if x.shape[1] != k or y.shape[0] != n or y.shape[1] != w.shape[0]:
        raise ValueError("matmul: shape mismatch")
    if n == 0 or w.shape[0] == 0:
        return
    cdef const int8_t *xp = &x[0, 0] if k > 0 else NULL
    _run(w, k, xp, x.shape[1], n, &y[0, 0], y.shape[1], threads, kernel)


def quantize_rows(const float[:, ::1] x, int8_t[:, ::1] q, float[::1] scales, int threads=1):
    """Per-row int8 quantization (ext/common/poppins_numerics.h; reference
    poppins.numerics.act_quant_codes): scales[r] = 127 / max(max|x[r]|, 1e-5),
    q = clip(rint(x * scale), -128, 127), round half to even, float32 arithmetic."""
    cdef int64_t n = x.shape[0], k = x.shape[1]
    if q.shape[0] != n or q.shape[1] != k or scales.shape[0] != n:
        raise ValueError("quantize_rows: shape mismatch")
    if n == 0:
        return
    if k == 0:  # no element to read: the scale of an empty (all-zero) row
        tern_quantize_rows(NULL, 0, n, 0, NULL, 0, &scales[0], 1)
        return
    with nogil:
        tern_quantize_rows(&x[0, 0], k, n, k, &q[0, 0], k, &scales[0], threads)

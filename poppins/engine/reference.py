"""NumPy references of ``poppins._ternary`` with the same signatures (used when the compiled
extension is missing or POPPINS_NO_EXT=1, and by the tests as the oracle).

Kernel layout ``b256`` v1 (ext/ternary/ternary.h): each row in blocks of 256 weights stored in
64 bytes; byte j of block b holds, at bit shift 2*s, weight 256*b + 64*s + j encoded as
u = t + 1 (0 = -1, 1 = 0, 2 = +1); weights past k are u = 1.
"""
from __future__ import annotations

import numpy as np

from .packing import CODE_INVALID, quantize_activations_ref

BLOCK = 256
BLOCK_BYTES = 64
K_MAX = 1 << 23
LAYOUT = "b256"
LAYOUT_VERSION = 1

_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)
_CODE_TO_U = np.array([1, 0, 2, 1], dtype=np.uint8)


def row_bytes(k: int) -> int:
    return (int(k) + BLOCK - 1) // BLOCK * BLOCK_BYTES


def build_info() -> dict:
    return {"openmp": False, "kernel": "reference", "available": [], "layout": f"b256 v{LAYOUT_VERSION}"}


def available() -> list:
    return []


def repack(codes, k, out, threads=1):
    """File layout -> b256 kernel layout into ``out``; returns the count of invalid 0b11 codes."""
    codes = np.asarray(codes, dtype=np.uint8)
    m = codes.shape[0]
    nblk = (k + BLOCK - 1) // BLOCK
    if out.shape[0] != m or codes.shape[1] < (k + 3) // 4 or out.shape[1] < nblk * BLOCK_BYTES:
        raise ValueError("repack: shape mismatch")
    if m == 0 or k == 0:
        return 0
    c = ((codes[:, :, None] >> _SHIFTS) & 3).reshape(m, -1)[:, :k]
    invalid = int(np.count_nonzero(c == CODE_INVALID))
    u = np.ones((m, nblk * BLOCK), dtype=np.uint8)
    u[:, :k] = _CODE_TO_U[c]
    u = u.reshape(m, nblk, 4, 64)
    packed = u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)
    out[:, : nblk * BLOCK_BYTES] = packed.reshape(m, nblk * BLOCK_BYTES)
    return invalid


def unpack_kernel_layout(w, k) -> np.ndarray:
    """b256 kernel layout (m, >= row_bytes(k)) -> ternary values (m, k) int8."""
    w = np.asarray(w, dtype=np.uint8)
    m = w.shape[0]
    nblk = (k + BLOCK - 1) // BLOCK
    if m == 0 or k == 0:
        return np.zeros((m, k), np.int8)
    b = w[:, : nblk * BLOCK_BYTES].reshape(m, nblk, 1, 64)
    u = (b >> _SHIFTS[None, None, :, None]) & 3
    return (u.reshape(m, nblk * BLOCK)[:, :k].astype(np.int8) - 1).astype(np.int8)


def _products(w, k, x2d):
    """Exact sums via float64 BLAS (|sum| <= 128 * 2^23 < 2^53), in row chunks."""
    m = w.shape[0]
    out = np.empty((x2d.shape[0], m), dtype=np.int32)
    xf = np.asarray(x2d, dtype=np.float64)
    step = max(1, (1 << 22) // max(k, 1))
    for r0 in range(0, m, step):
        t = unpack_kernel_layout(w[r0:r0 + step], k).astype(np.float64)
        out[:, r0:r0 + step] = (xf @ t.T).astype(np.int32)
    return out


def _check_k(k):
    if not 0 <= k <= K_MAX:
        raise ValueError(f"k={k} is out of range (0..{K_MAX})")


def matvec(w, k, x, y, threads=1, kernel=-1):
    """y[r] = sum_i t[r, i] * x[i] (exact int32)."""
    _check_k(k)
    if x.shape[0] != k or y.shape[0] != w.shape[0]:
        raise ValueError("matvec: shape mismatch")
    y[:] = _products(w, k, np.asarray(x).reshape(1, k))[0]


def matmul(w, k, x, y, threads=1, kernel=-1):
    """y[c, r] = sum_i t[r, i] * x[c, i] (exact int32)."""
    _check_k(k)
    if x.shape[1] != k or y.shape[0] != x.shape[0] or y.shape[1] != w.shape[0]:
        raise ValueError("matmul: shape mismatch")
    y[:, :] = _products(w, k, x)


def quantize_rows(x, q, scales, threads=1):
    """scales[r] = 127 / max(max|x[r]|, 1e-5); q = clip(rint(x * s), -128, 127)
    (poppins.numerics.act_quant_codes)."""
    qq, ss = quantize_activations_ref(x)
    q[:, :] = qq
    scales[:] = ss

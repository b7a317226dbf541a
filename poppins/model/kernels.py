"""Thin layer over the fused kernels: compiled ``poppins._ops`` or the NumPy references.

Every function checks dtypes, shapes and contiguity (2-D arrays may be row views of a larger
buffer -- any row stride -- but their rows must be contiguous), then calls the compiled kernel
from ``poppins.native.load("ops")`` or, when the extension is missing (or
``POPPINS_NO_EXT=1``), the reference of the same signature in :mod:`poppins.model.reference`.
The thread count is always passed explicitly (see :mod:`poppins.threads`).

``POPPINS_KERNEL=scalar|avx2|avx512`` forces the SIMD path of the compiled kernels: applied by
``poppins.native.load`` (its one reader and rule); the kernels never read the environment.
"""
from __future__ import annotations

import numpy as np

from .. import native
from . import reference

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_state = {"mod": None, "loaded": False}


def _ops():
    if not _state["loaded"]:
        mod = native.load("ops")  # applies POPPINS_KERNEL (native's one rule)
        _state["mod"] = mod
        _state["loaded"] = True
    return _state["mod"]


def reset() -> None:
    """Forget the chosen backend (tests call this after changing POPPINS_NO_EXT)."""
    _state["mod"] = None
    _state["loaded"] = False


def backend() -> str:
    """'compiled:<kernel>' or 'reference'."""
    mod = _ops()
    if mod is None:
        return "reference"
    return "compiled:" + str(mod.build_info().get("kernel", "?"))


def _impl(name, use_reference):
    mod = None if use_reference else _ops()
    if mod is not None and hasattr(mod, name):
        return getattr(mod, name)
    return getattr(reference, name)


def _chk(name, a, dt, ndim, shape=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dt:
        raise TypeError(f"{name}: dtype {a.dtype} != {dt}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {a.shape} != {tuple(shape)}")
    if a.size and a.strides[-1] != a.itemsize:
        raise ValueError(f"{name}: rows must be contiguous (strides {a.strides})")
    if ndim == 2 and a.shape[0] > 1 and a.size and a.strides[0] < a.shape[1] * a.itemsize:
        raise ValueError(f"{name}: overlapping rows (strides {a.strides})")
    if ndim == 3 and not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def _w(name, a):
    if not a.flags.writeable:
        raise ValueError(f"{name}: output array is read-only")


def _float(a, name):
    dt = a.dtype
    if dt not in _FLOATS:
        raise TypeError(f"{name}: dtype must be float32 or float64, got {dt}")
    return dt


def _i32(name, a, shape):
    if not isinstance(a, np.ndarray) or a.dtype != np.int32 or not a.flags.c_contiguous:
        raise TypeError(f"{name}: expected a C-contiguous int32 array")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {a.shape} != {tuple(shape)}")


def compiled_gemm() -> bool:
    """True when GEMMs run on poppins' thread pool (compiled module + numpy's cblas found)."""
    mod = _ops()
    return mod is not None and hasattr(mod, "gemm_ready") and mod.gemm_ready()


def blas_context(threads: int):
    """Context for a forward/backward pass: the BLAS itself runs single-threaded when the
    compiled GEMM splits the work over poppins' threads, else on ``threads`` threads."""
    from ..threads import blas_threads

    return blas_threads(1 if compiled_gemm() else threads)


# --------------------------------------------------------------------------- kernels
def gemm(a, b, out, trans_a=False, trans_b=False, accumulate=False, threads=1,
         use_reference=False):
    """out (= or += when accumulate) op(a) @ op(b); op transposes when trans_* is set.

    The compiled path splits the product into one block per thread, each a single-threaded
    BLAS call (run it inside :func:`blas_context`); the reference is ``np.matmul``.
    """
    dt = _float(out, "out")
    _chk("a", a, dt, 2)
    _chk("b", b, dt, 2)
    _chk("out", out, dt, 2)
    _w("out", out)
    M, N = out.shape
    am, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    bk, bn = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if am != M or bn != N or bk != K:
        raise ValueError(f"gemm: shapes {a.shape}{'T' if trans_a else ''} @ "
                         f"{b.shape}{'T' if trans_b else ''} -> {out.shape} do not match")
    if not use_reference and compiled_gemm():
        _ops().gemm(a, b, out, bool(trans_a), bool(trans_b), 1.0, 1.0 if accumulate else 0.0,
                    int(threads))
        return
    reference.gemm(a, b, out, trans_a, trans_b, accumulate, threads)


def act_quant(x, out, threads=1, use_reference=False):
    dt = _float(x, "x")
    _chk("x", x, dt, 2)
    _chk("out", out, dt, 2, x.shape)
    _w("out", out)
    _impl("act_quant", use_reference)(x, out, int(threads))


def rmsnorm_quant_fwd(x, g, out, rstd, eps, quant, threads=1, use_reference=False):
    dt = _float(x, "x")
    _chk("x", x, dt, 2)
    n, d = x.shape
    _chk("g", g, dt, 1, (d,))
    _chk("out", out, dt, 2, (n, d))
    _chk("rstd", rstd, dt, 1, (n,))
    _w("out", out)
    _impl("rmsnorm_quant_fwd", use_reference)(x, g, out, rstd, float(eps), bool(quant),
                                              int(threads))


def rmsnorm_bwd(x, g, rstd, dy, dx, dg, accumulate, threads=1, use_reference=False):
    dt = _float(x, "x")
    _chk("x", x, dt, 2)
    n, d = x.shape
    _chk("g", g, dt, 1, (d,))
    _chk("rstd", rstd, dt, 1, (n,))
    _chk("dy", dy, dt, 2, (n, d))
    _chk("dx", dx, dt, 2, (n, d))
    _chk("dg", dg, dt, 1, (d,))
    _impl("rmsnorm_bwd", use_reference)(x, g, rstd, dy, dx, dg, bool(accumulate), int(threads))


def relu2_quant_fwd(u, out, quant, threads=1, use_reference=False):
    dt = _float(u, "u")
    _chk("u", u, dt, 2)
    _chk("out", out, dt, 2, u.shape)
    _impl("relu2_quant_fwd", use_reference)(u, out, bool(quant), int(threads))


def relu2_bwd(u, dy, du, threads=1, use_reference=False):
    dt = _float(u, "u")
    _chk("u", u, dt, 2)
    _chk("dy", dy, dt, 2, u.shape)
    _chk("du", du, dt, 2, u.shape)
    _impl("relu2_bwd", use_reference)(u, dy, du, int(threads))


def weight_quant(w, out, threads=1, use_reference=False) -> float:
    dt = _float(w, "w")
    if not w.flags.c_contiguous or not out.flags.c_contiguous:
        raise ValueError("weight_quant: w and out must be C-contiguous")
    if out.dtype != dt or out.shape != w.shape:
        raise ValueError("weight_quant: out must match w in dtype and shape")
    return float(_impl("weight_quant", use_reference)(w.reshape(-1), out.reshape(-1),
                                                      int(threads)))


def rope(x, cos, sin, seq_len, nheads, head_stride, offset, inverse, threads=1,
         use_reference=False):
    """Rotate in place, for h < nheads, the columns [h*head_stride + offset, + rot) of x's
    rows (rot = 2 * cos.shape[1]); row r is position r % seq_len."""
    dt = _float(x, "x")
    _chk("x", x, dt, 2)
    _chk("cos", cos, dt, 2)
    _chk("sin", sin, dt, 2, cos.shape)
    rot = 2 * cos.shape[1]
    if cos.shape[0] < seq_len or not cos.flags.c_contiguous or not sin.flags.c_contiguous:
        raise ValueError("rope: cos/sin tables must be C-contiguous with >= seq_len rows")
    if offset < 0 or offset + rot > head_stride or (nheads - 1) * head_stride + offset + rot \
            > x.shape[1]:
        raise ValueError("rope: rotated columns fall outside the rows")
    if x.shape[0] % seq_len:
        raise ValueError("rope: the number of rows must be a multiple of seq_len")
    _w("x", x)
    _impl("rope", use_reference)(x, cos, sin, int(seq_len), int(nheads), int(head_stride),
                                 int(offset), bool(inverse), int(threads))


def _attn_checks(q, k, v, seg_start, n_heads, n_kv_heads):
    dt = _float(q, "q")
    for nm, a in (("q", q), ("k", k), ("v", v)):
        _chk(nm, a, dt, 2)
    B, T = seg_start.shape
    _i32("seg_start", seg_start, (B, T))
    if n_heads % n_kv_heads:
        raise ValueError("attention: n_heads must be a multiple of n_kv_heads")
    n = B * T
    if q.shape[0] != n or k.shape[0] != n or v.shape[0] != n:
        raise ValueError("attention: q, k, v need B*T rows")
    if q.shape[1] % n_heads or k.shape[1] % n_kv_heads or v.shape[1] % n_kv_heads:
        raise ValueError("attention: widths must be multiples of the head counts")
    if q.shape[1] // n_heads != k.shape[1] // n_kv_heads:
        raise ValueError("attention: q and k head widths differ")
    st = seg_start
    t = np.arange(T, dtype=np.int32)[None, :]
    if T and (np.any(st < 0) or np.any(st > t)):
        raise ValueError("attention: seg_start must satisfy 0 <= seg_start[b, t] <= t")
    return dt, B, T


def attn_fwd(q, k, v, o, lse, seg_start, n_heads, n_kv_heads, scale, threads=1,
             use_reference=False):
    dt, B, T = _attn_checks(q, k, v, seg_start, n_heads, n_kv_heads)
    dv = v.shape[1] // n_kv_heads
    _chk("o", o, dt, 2, (B * T, n_heads * dv))
    _chk("lse", lse, dt, 3, (B, n_heads, T))
    _impl("attn_fwd", use_reference)(q, k, v, o, lse, seg_start, int(n_heads), int(n_kv_heads),
                                     float(scale), int(threads))


def attn_bwd(q, k, v, o, lse, do, dq, dk, dv, seg_start, n_heads, n_kv_heads, scale, threads=1,
             use_reference=False):
    dt, B, T = _attn_checks(q, k, v, seg_start, n_heads, n_kv_heads)
    _chk("o", o, dt, 2)
    _chk("do", do, dt, 2, o.shape)
    _chk("lse", lse, dt, 3, (B, n_heads, T))
    _chk("dq", dq, dt, 2, q.shape)
    _chk("dk", dk, dt, 2, k.shape)
    _chk("dv", dv, dt, 2, v.shape)
    _impl("attn_bwd", use_reference)(q, k, v, o, lse, do, dq, dk, dv, seg_start, int(n_heads),
                                     int(n_kv_heads), float(scale), int(threads))


def cross_entropy(logits, targets, coef, dlogits, losses, threads=1, use_reference=False):
    dt = _float(logits, "logits")
    _chk("logits", logits, dt, 2)
    n, V = logits.shape
    _i32("targets", targets, (n,))
    _chk("coef", coef, dt, 1, (n,))
    _chk("dlogits", dlogits, dt, 2, (n, V))
    _chk("losses", losses, dt, 1, (n,))
    if n and int(targets.max(initial=-1)) >= V:
        raise ValueError("cross_entropy: target id out of range")
    return float(_impl("cross_entropy", use_reference)(logits, targets, coef, dlogits, losses,
                                                       int(threads)))


def adamw(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, threads=1,
          use_reference=False):
    dt = _float(p, "p")
    for nm, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        if a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous or a.shape != p.shape:
            raise ValueError(f"adamw: {nm} must be a contiguous 1-D {dt} array like p")
    if step < 1:
        raise ValueError("adamw: step counts from 1")
    _impl("adamw", use_reference)(p, g, m, v, float(lr), float(beta1), float(beta2), float(eps),
                                  float(weight_decay), int(step), int(threads))


def embed_fwd(table, tokens, out, threads=1, use_reference=False):
    dt = _float(table, "table")
    _chk("table", table, dt, 2)
    _i32("tokens", tokens, tokens.shape)
    tokens = tokens.reshape(-1)
    _chk("out", out, dt, 2, (tokens.shape[0], table.shape[1]))
    if tokens.size and (tokens.min() < 0 or tokens.max() >= table.shape[0]):
        raise ValueError("embedding: token id out of range")
    _impl("embed_fwd", use_reference)(table, tokens, out, int(threads))


def embed_bwd(dtable, tokens, dx, threads=1, use_reference=False):
    dt = _float(dtable, "dtable")
    _chk("dtable", dtable, dt, 2)
    _i32("tokens", tokens, tokens.shape)
    tokens = tokens.reshape(-1)
    _chk("dx", dx, dt, 2, (tokens.shape[0], dtable.shape[1]))
    _impl("embed_bwd", use_reference)(dtable, tokens, dx, int(threads))

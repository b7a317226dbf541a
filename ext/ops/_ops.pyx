# cython: language_level=3
"""poppins._ops: fused kernels of the ternary transformer (RMSNorm, RoPE, causal attention
within segments, squared ReLU, the two quantizers, weighted cross-entropy, AdamW, embedding).

Same names and signatures as poppins/model/reference.py; float32 and float64 (fused types).
2-D arguments may be row views of larger buffers (any row stride, contiguous rows).  Call
them through poppins.model.kernels, which checks dtypes and shapes.
"""
from libc.stdint cimport int32_t
from ops_api cimport *


ctypedef fused real:
    float
    double


include "poppins_cpu.pxi"


def build_info():
    """openmp, the path in use ("kernel"), the paths this build and CPU run ("available"),
    and the CPU features each compiled path needs ("needs", checked by its dispatcher)."""
    needs = {}
    for name in ("scalar", "avx2", "avx512"):
        m = pp_ops_needs(name.encode())
        if m >= 0:
            needs[name] = _feature_names(m)
    return {"openmp": bool(poppins_build_openmp()), "kernel": pp_ops().name.decode(),
            "gemm": "blas-split" if pp_gemm_ready() else "numpy",
            "attention": "blas-blocks" if pp_attn_blas_active() else "loops",
            "available": pp_ops_available().decode().split(","), "needs": needs,
            "par_min_elements": poppins_par_min_elements()}


def set_kernel(str name):
    """Force the SIMD path ('scalar', 'avx2', 'avx512'); ValueError when unavailable."""
    if pp_ops_set_kernel(name.encode()) != 0:
        raise ValueError(f"kernel path {name!r} is not available "
                         f"(available: {pp_ops_available().decode()})")


cdef inline long _ld(const real[:, :] a) except -1:
    """Row stride in elements; the rows themselves must be contiguous."""
    if a.shape[1] > 1 and a.strides[1] != sizeof(real):
        raise ValueError("rows must be contiguous")
    if a.shape[0] > 1 and a.strides[0] % sizeof(real):
        raise ValueError("row stride is not a multiple of the element size")
    return a.strides[0] // sizeof(real) if a.shape[0] > 1 else a.shape[1]


def act_quant(const real[:, :] x, real[:, :] out, int threads=1):
    cdef long n = x.shape[0], d = x.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_x = _ld(x), ld_out = _ld(out)
    with nogil:
        if real is float:
            pp_ops().act_quant_f32(&x[0, 0], ld_x, &out[0, 0], ld_out, n, d, threads)
        else:
            pp_ops().act_quant_f64(&x[0, 0], ld_x, &out[0, 0], ld_out, n, d, threads)


def rmsnorm_quant_fwd(const real[:, :] x, const real[::1] g, real[:, :] out, real[::1] rstd,
                      double eps, bint quant, int threads=1):
    cdef long n = x.shape[0], d = x.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_x = _ld(x), ld_out = _ld(out)
    with nogil:
        if real is float:
            pp_ops().rmsnorm_quant_fwd_f32(&x[0, 0], ld_x, &g[0], &out[0, 0], ld_out,
                                           &rstd[0], n, d, eps, quant, threads)
        else:
            pp_ops().rmsnorm_quant_fwd_f64(&x[0, 0], ld_x, &g[0], &out[0, 0], ld_out,
                                           &rstd[0], n, d, eps, quant, threads)


def rmsnorm_bwd(const real[:, :] x, const real[::1] g, const real[::1] rstd, const real[:, :] dy, real[:, :] dx,
                real[::1] dg, bint accumulate, int threads=1):
    cdef long n = x.shape[0], d = x.shape[1]
    if d == 0:
        return
    if n == 0:
        dg[:] = 0
        return
    cdef long ld_x = _ld(x), ld_dy = _ld(dy), ld_dx = _ld(dx)
    with nogil:
        if real is float:
            pp_ops().rmsnorm_bwd_f32(&x[0, 0], ld_x, &g[0], &rstd[0], &dy[0, 0], ld_dy,
                                     &dx[0, 0], ld_dx, &dg[0], n, d, accumulate, threads)
        else:
            pp_ops().rmsnorm_bwd_f64(&x[0, 0], ld_x, &g[0], &rstd[0], &dy[0, 0], ld_dy,
                                     &dx[0, 0], ld_dx, &dg[0], n, d, accumulate, threads)


def relu2_quant_fwd(const real[:, :] u, real[:, :] out, bint quant, int threads=1):
    cdef long n = u.shape[0], d = u.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_u = _ld(u), ld_out = _ld(out)
    with nogil:
        if real is float:
            pp_ops().relu2_quant_fwd_f32(&u[0, 0], ld_u, &out[0, 0], ld_out, n, d, quant,
                                         threads)
        else:
            pp_ops().relu2_quant_fwd_f64(&u[0, 0], ld_u, &out[0, 0], ld_out, n, d, quant,
                                         threads)


def relu2_bwd(const real[:, :] u, const real[:, :] dy, real[:, :] du, int threads=1):
    cdef long n = u.shape[0], d = u.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_u = _ld(u), ld_dy = _ld(dy), ld_du = _ld(du)
    with nogil:
        if real is float:
            pp_ops().relu2_bwd_f32(&u[0, 0], ld_u, &dy[0, 0], ld_dy, &du[0, 0], ld_du,
                                   n, d, threads)
        else:
            pp_ops().relu2_bwd_f64(&u[0, 0], ld_u, &dy[0, 0], ld_dy, &du[0, 0], ld_du,
                                   n, d, threads)


def weight_quant(const real[::1] w, real[::1] out, int threads=1):
    cdef long n = w.shape[0]
    cdef double s
    if n == 0:
        return 1e-5
    with nogil:
        if real is float:
            s = pp_ops().weight_quant_f32(&w[0], &out[0], n, threads)
        else:
            s = pp_ops().weight_quant_f64(&w[0], &out[0], n, threads)
    return s


def rope(real[:, :] x, const real[:, ::1] cos, const real[:, ::1] sin, long seq_len, long nheads,
         long head_stride, long offset, bint inverse, int threads=1):
    cdef long n = x.shape[0], half = cos.shape[1]
    if n == 0 or half == 0 or nheads == 0:
        return
    cdef long ld_x = _ld(x)
    with nogil:
        if real is float:
            pp_ops().rope_f32(&x[0, 0], ld_x, n, &cos[0, 0], &sin[0, 0], half, seq_len,
                              nheads, head_stride, offset, inverse, threads)
        else:
            pp_ops().rope_f64(&x[0, 0], ld_x, n, &cos[0, 0], &sin[0, 0], half, seq_len,
                              nheads, head_stride, offset, inverse, threads)


def attn_fwd(const real[:, :] q, const real[:, :] k, const real[:, :] v, real[:, :] o,
             real[:, :, ::1] lse, const int32_t[:, ::1] seg_start, long n_heads, long n_kv_heads,
             double scale, int threads=1):
    cdef long B = seg_start.shape[0], T = seg_start.shape[1]
    cdef long dqk = q.shape[1] // n_heads, dv = v.shape[1] // n_kv_heads
    cdef int rc = 0
    if B == 0 or T == 0 or dv == 0:
        return
    cdef long ld_q = _ld(q), ld_k = _ld(k), ld_v = _ld(v), ld_o = _ld(o)
    with nogil:
        if real is float:
            rc = pp_ops().attn_fwd_f32(&q[0, 0], ld_q, &k[0, 0], ld_k, &v[0, 0], ld_v,
                                       &o[0, 0], ld_o, &lse[0, 0, 0], &seg_start[0, 0], B, T,
                                       n_heads, n_kv_heads, dqk, dv, scale, threads)
        else:
            rc = pp_ops().attn_fwd_f64(&q[0, 0], ld_q, &k[0, 0], ld_k, &v[0, 0], ld_v,
                                       &o[0, 0], ld_o, &lse[0, 0, 0], &seg_start[0, 0], B, T,
                                       n_heads, n_kv_heads, dqk, dv, scale, threads)
    if rc:
        raise MemoryError("attn_fwd: out of memory")


def attn_bwd(const real[:, :] q, const real[:, :] k, const real[:, :] v, const real[:, :] o,
             const real[:, :, ::1] lse, const real[:, :] do, real[:, :] dq, real[:, :] dk,
             real[:, :] dv_, const int32_t[:, ::1] seg_start, long n_heads, long n_kv_heads,
             double scale, int threads=1):
    cdef long B = seg_start.shape[0], T = seg_start.shape[1]
    cdef long dqk = q.shape[1] // n_heads, dv = v.shape[1] // n_kv_heads
    cdef int rc = 0
    if B == 0 or T == 0 or dv == 0:
        return
    cdef long ld_q = _ld(q), ld_k = _ld(k), ld_v = _ld(v), ld_o = _ld(o), ld_do = _ld(do), ld_dq = _ld(dq), ld_dk = _ld(dk), ld_dv_ = _ld(dv_)
    with nogil:
        if real is float:
            rc = pp_ops().attn_bwd_f32(&q[0, 0], ld_q, &k[0, 0], ld_k, &v[0, 0], ld_v,
                                       &o[0, 0], ld_o, &lse[0, 0, 0], &do[0, 0], ld_do,
                                       &dq[0, 0], ld_dq, &dk[0, 0], ld_dk, &dv_[0, 0],
                                       ld_dv_, &seg_start[0, 0], B, T, n_heads, n_kv_heads,
                                       dqk, dv, scale, threads)
        else:
            rc = pp_ops().attn_bwd_f64(&q[0, 0], ld_q, &k[0, 0], ld_k, &v[0, 0], ld_v,
                                       &o[0, 0], ld_o, &lse[0, 0, 0], &do[0, 0], ld_do,
                                       &dq[0, 0], ld_dq, &dk[0, 0], ld_dk, &dv_[0, 0],
                                       ld_dv_, &seg_start[0, 0], B, T, n_heads, n_kv_heads,
                                       dqk, dv, scale, threads)
    if rc:
        raise MemoryError("attn_bwd: out of memory")


def cross_entropy(const real[:, :] logits, const int32_t[::1] targets, const real[::1] coef,
                  real[:, :] dlogits, real[::1] losses, int threads=1):
    cdef long n = logits.shape[0], V = logits.shape[1]
    cdef double tot = 0
    if n == 0 or V == 0:
        return 0.0
    cdef long ld_logits = _ld(logits), ld_dlogits = _ld(dlogits)
    with nogil:
        if real is float:
            tot = pp_ops().cross_entropy_f32(&logits[0, 0], ld_logits, &targets[0], &coef[0],
                                             &dlogits[0, 0], ld_dlogits, &losses[0], n, V,
                                             threads)
        else:
            tot = pp_ops().cross_entropy_f64(&logits[0, 0], ld_logits, &targets[0], &coef[0],
                                             &dlogits[0, 0], ld_dlogits, &losses[0], n, V,
                                             threads)
    if tot != tot:
        raise MemoryError("cross_entropy: out of memory")
    return tot


def adamw(real[::1] p, const real[::1] g, real[::1] m, real[::1] v, double lr, double beta1,
          double beta2, double eps, double weight_decay, long step, int threads=1):
    cdef long n = p.shape[0]
    if n == 0:
        return
    with nogil:
        if real is float:
            pp_ops().adamw_f32(&p[0], &g[0], &m[0], &v[0], n, lr, beta1, beta2, eps,
                               weight_decay, step, threads)
        else:
            pp_ops().adamw_f64(&p[0], &g[0], &m[0], &v[0], n, lr, beta1, beta2, eps,
                               weight_decay, step, threads)


def embed_fwd(const real[:, :] table, const int32_t[::1] tokens, real[:, :] out, int threads=1):
    cdef long n = tokens.shape[0], d = table.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_table = _ld(table), ld_out = _ld(out)
    with nogil:
        if real is float:
            pp_ops().embed_fwd_f32(&table[0, 0], ld_table, &tokens[0], &out[0, 0], ld_out,
                                   n, d, threads)
        else:
            pp_ops().embed_fwd_f64(&table[0, 0], ld_table, &tokens[0], &out[0, 0], ld_out,
                                   n, d, threads)


def embed_bwd(real[:, :] dtable, const int32_t[::1] tokens, const real[:, :] dx, int threads=1):
    cdef long n = tokens.shape[0], d = dtable.shape[1]
    if n == 0 or d == 0:
        return
    cdef long ld_dtable = _ld(dtable), ld_dx = _ld(dx)
    with nogil:
        if real is float:
            pp_ops().embed_bwd_f32(&dtable[0, 0], ld_dtable, &tokens[0], &dx[0, 0], ld_dx,
                                   n, d, threads)
        else:
            pp_ops().embed_bwd_f64(&dtable[0, 0], ld_dtable, &tokens[0], &dx[0, 0], ld_dx,
                                   n, d, threads)


def gemm_set(size_t sgemm, size_t dgemm, bint ilp64):
    """Hand over the addresses of the BLAS's cblas_sgemm / cblas_dgemm (0 to disable)."""
    pp_gemm_set(<void *>sgemm, <void *>dgemm, ilp64)


def _hand_over_blas():
    """Find cblas_?gemm in the BLAS numpy loaded and give their addresses to the C side."""
    try:
        import ctypes
        from poppins.threads import blas_library
        lib, _ = blas_library()
        if lib is None:
            return
        for s_name, d_name, ilp64 in (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
                                      ("cblas_sgemm64_", "cblas_dgemm64_", True),
                                      ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False),
                                      ("cblas_sgemm", "cblas_dgemm", False)):
            if hasattr(lib, s_name) and hasattr(lib, d_name):
                gemm_set(ctypes.cast(getattr(lib, s_name), ctypes.c_void_p).value,
                         ctypes.cast(getattr(lib, d_name), ctypes.c_void_p).value, ilp64)
                return
    except Exception:  # no usable BLAS: GEMMs fall back to numpy.matmul
        pass


def set_attention_blas(bint on):
    """Attention by blocks of BLAS products (True, the default) or by plain loops."""
    pp_attn_set_blas(on)


def attention_blas():
    return bool(pp_attn_blas_active())


def gemm_ready():
    return bool(pp_gemm_ready())


def gemm(const real[:, :] a, const real[:, :] b, real[:, :] out, bint trans_a, bint trans_b,
         double alpha, double beta, int threads=1):
    """out = alpha * op(a) @ op(b) + beta * out (op = transpose when trans_*)."""
    cdef long M = out.shape[0], N = out.shape[1]
    cdef long K = a.shape[0] if trans_a else a.shape[1]
    cdef long am = a.shape[1] if trans_a else a.shape[0]
    cdef long bk = b.shape[1] if trans_b else b.shape[0]
    cdef long bn = b.shape[0] if trans_b else b.shape[1]
    cdef int rc = 0
    if am != M or bn != N or bk != K:
        raise ValueError("gemm: shapes do not match")
    if M == 0 or N == 0:
        return
    cdef long i, j
    if K == 0:  # op(a) @ op(b) is all zeros
        for i in range(M):
            for j in range(N):
                out[i, j] = 0 if beta == 0 else <real>(beta * out[i, j])
        return
    cdef long ld_a = _ld(a), ld_b = _ld(b), ld_out = _ld(out)
    with nogil:
        if real is float:
            rc = pp_gemm_f32(trans_a, trans_b, M, N, K, <float>alpha, &a[0, 0], ld_a, &b[0, 0],
                             ld_b, <float>beta, &out[0, 0], ld_out, threads)
        else:
            rc = pp_gemm_f64(trans_a, trans_b, M, N, K, alpha, &a[0, 0], ld_a, &b[0, 0], ld_b,
                             beta, &out[0, 0], ld_out, threads)
    if rc:
        raise RuntimeError("gemm: no BLAS handed over (call gemm_set first)")


_hand_over_blas()

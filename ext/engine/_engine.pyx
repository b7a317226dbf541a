# cython: language_level=3
"""Compiled engine ops (poppins._engine): RMSNorm + int8 quantization, squared ReLU,
dequantization of the ternary kernels' int32 sums, RoPE, attention over the KV cache (MHA/GQA
and MLA's absorbed latent attention), the output head (f32 / f16 / int8) and the embedding.

Same names and signatures as the NumPy references in poppins/engine/ops_ref.py (see there for
what each computes); every op releases the GIL and splits its work over ``threads`` OpenMP
threads when it is large enough.  Float arrays are float32 with contiguous rows (any row
stride); the quantizer, RMSNorm and RoPE are the one C copy of ext/common/poppins_numerics.h
(s = 127 / max(max|y|, 1e-5) in float32, round half to even; reference poppins/numerics.py).
"""
import numpy as np

from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, expf
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport int8_t, uint16_t, int32_t, int64_t, uint64_t
from cpython.pycapsule cimport PyCapsule_GetPointer
from engine_api cimport *

include "poppins_cpu.pxi"

# The ternary kernels are compiled once, into poppins._ternary: the decode step calls them
# through its C API table (ext/ternary/ternary.h, tern_c_api).
from poppins import _ternary as _tern_module

if eng_set_ternary(PyCapsule_GetPointer(_tern_module._C_API, b"poppins._ternary._C_API")) != 0:
    raise ImportError("poppins._ternary's C API has another version than poppins._engine's")

#: ternary path id of the AVX-512 kernels (ext/ternary/ternary.h TERN_AVX512)
cdef int TERN_AVX512_ID = _tern_module.kernel_id("avx512")

eng_init()
eng_step_init()  # CPU detection of the step's kernels, once, before any thread uses them

cdef extern from "poppins_common.h" nogil:
    long long PP_PAR_MIN_ELEMENTS
    long long poppins_par_min_elements()

#: below this many elements of work an op runs on one thread (poppins/threads.py
#: PARALLEL_MIN_ELEMENTS, passed to the C code by setup.py)
cdef int64_t MIN_PAR = PP_PAR_MIN_ELEMENTS


cdef inline int _nt(int threads, int64_t work) noexcept nogil:
    if threads < 1 or work < MIN_PAR:
        return 1
    return threads


def build_info():
    """openmp, the dot-product path ("kernel"), the paths available, the CPU features each
    compiled path needs ("needs"), and the matrix-vector product of the decode step (the
    ternary module's best path, called through its C API)."""
    needs = {}
    for i in range(ENG_NKERNELS):
        if eng_kernel_needs(i) >= 0:
            needs[eng_kernel_name(i).decode()] = _feature_names(eng_kernel_needs(i))
    return {"openmp": bool(poppins_build_openmp()), "kernel": eng_kernel_name(eng_kernel()).decode(),
            "available": [eng_kernel_name(i).decode() for i in range(ENG_NKERNELS)
                          if eng_kernel_available(i)], "needs": needs,
            "par_min_elements": poppins_par_min_elements(),
            "decode_matvec": "ternary " + _tern_module.best_kernel()}


def set_kernel(str name):
    """Force a path ("scalar", "avx2"); ValueError when it is not available."""
    for i in range(ENG_NKERNELS):
        if eng_kernel_name(i).decode() == name:
            if eng_set_kernel(i) == 0:
                return
    raise ValueError(f"engine kernel path {name!r} is not available")


cdef inline void _rows_ok(name, mv) except *:
    if mv.shape[0] and mv.shape[1] and mv.strides[1] != mv.itemsize:
        raise ValueError(f"{name}: rows must be contiguous")


# --------------------------------------------------------------------------- quantization
# The one quantizer / RMSNorm / RoPE of ext/common/poppins_numerics.h (training's clamp rule:
# s = 127 / max(max|y|, 1e-5)); NumPy reference: poppins/numerics.py.
cdef extern from "poppins_numerics.h" nogil:
    float pp_quant_row_f32(const float *y, int64_t d, int8_t *q)
    float pp_rms_row_f32(const float *x, const float *g, int64_t d, double eps, float *y)
    void pp_rope_pairs_f32(float *a, float *b, const float *c, const float *s, int64_t half,
                           int inverse)


cdef inline void _quant_row(const float *y, int64_t d, int8_t *q, float *s) noexcept nogil:
    s[0] = pp_quant_row_f32(y, d, q)


cdef inline void _rms_row(const float *x, const float *g, int64_t d, double eps,
                          float *y) noexcept nogil:
    pp_rms_row_f32(x, g, d, eps, y)


# Row loop on raw pointers (no memoryview index arithmetic in the inner loop, no aliasing
# question): the C compiler vectorizes it (the squared ReLU is eng_relu2_row of engine.h).
cdef inline void _dequant_row(const int32_t *a, int64_t m, float f, float *out,
                              bint accumulate) noexcept nogil:
    cdef int64_t j
    if accumulate:
        for j in range(m):
            out[j] = out[j] + (<float>a[j]) * f
    else:
        for j in range(m):
            out[j] = (<float>a[j]) * f


def rmsnorm(const float[:, :] x, const float[::1] g, double eps, float[:, :] out, int threads=1):
    cdef int64_t n = x.shape[0], d = x.shape[1], i
    _rows_ok("x", x); _rows_ok("out", out)
    if g.shape[0] != d or out.shape[0] != n or out.shape[1] != d:
        raise ValueError("rmsnorm: shape mismatch")
    if n == 0 or d == 0:
        return
    cdef int nt = _nt(threads, n * d)
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        _rms_row(&x[i, 0], &g[0], d, eps, &out[i, 0])


def rmsnorm_quant(const float[:, :] x, const float[::1] g, double eps, int8_t[:, :] q,
                  float[::1] scales, int threads=1):
    cdef int64_t n = x.shape[0], d = x.shape[1], i
    _rows_ok("x", x); _rows_ok("q", q)
    if g.shape[0] != d or q.shape[0] != n or q.shape[1] != d or scales.shape[0] != n:
        raise ValueError("rmsnorm_quant: shape mismatch")
    if n == 0 or d == 0:
        return
    cdef int nt = _nt(threads, n * d)
    cdef float *buf = NULL
    with nogil, parallel(num_threads=nt):
        buf = <float *>malloc(d * sizeof(float))
        for i in prange(n, schedule="static"):
            _rms_row(&x[i, 0], &g[0], d, eps, buf)
            _quant_row(buf, d, &q[i, 0], &scales[i])
        free(buf)


def quant_rows(const float[:, :] x, int8_t[:, :] q, float[::1] scales, int threads=1):
    cdef int64_t n = x.shape[0], d = x.shape[1], i
    _rows_ok("x", x); _rows_ok("q", q)
    if q.shape[0] != n or q.shape[1] != d or scales.shape[0] != n:
        raise ValueError("quant_rows: shape mismatch")
    if n == 0:
        return
    cdef int nt = _nt(threads, n * d)
    if d == 0:  # no element to read: the scale of an empty (all-zero) row
        for i in range(n):
            scales[i] = pp_quant_row_f32(NULL, 0, NULL)
        return
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        _quant_row(&x[i, 0], d, &q[i, 0], &scales[i])


def relu2_quant(const float[:, :] u, int8_t[:, :] q, float[::1] scales, int threads=1):
    cdef int64_t n = u.shape[0], d = u.shape[1], i
    _rows_ok("u", u); _rows_ok("q", q)
    if q.shape[0] != n or q.shape[1] != d or scales.shape[0] != n:
        raise ValueError("relu2_quant: shape mismatch")
    if n == 0 or d == 0:
        return
    cdef int nt = _nt(threads, n * d)
    cdef float *buf = NULL
    with nogil, parallel(num_threads=nt):
        buf = <float *>malloc(d * sizeof(float))
        for i in prange(n, schedule="static"):
            eng_relu2_row(&u[i, 0], d, buf)
            _quant_row(buf, d, &q[i, 0], &scales[i])
        free(buf)


def dequant(const int32_t[:, :] acc, double wscale, const float[::1] xscales, float[:, :] out,
            bint accumulate, int threads=1):
    cdef int64_t n = acc.shape[0], m = acc.shape[1], i, j
    _rows_ok("out", out)
    if out.shape[0] != n or out.shape[1] != m or xscales.shape[0] != n:
        raise ValueError("dequant: shape mismatch")
    cdef float ws = <float>wscale, f
    cdef int nt = _nt(threads, n * m)
    if n == 0 or m == 0:
        return
    if acc.strides[1] == 4:
        for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
            _dequant_row(&acc[i, 0], m, ws / xscales[i], &out[i, 0], accumulate)
        return
    for i in prange(n, nogil=True, num_threads=nt, schedule="static"):
        f = ws / xscales[i]
        if accumulate:
            for j in range(m):
                out[i, j] = out[i, j] + (<float>acc[i, j]) * f
        else:
            for j in range(m):
                out[i, j] = (<float>acc[i, j]) * f


# --------------------------------------------------------------------------- rope
def rope(float[:, :] x, const float[:, ::1] cos, const float[:, ::1] sin, int64_t pos0,
         int64_t nheads, int64_t head_stride, int64_t offset, int threads=1):
    cdef int64_t n = x.shape[0], half = cos.shape[1], t, h, c0, pos
    _rows_ok("x", x)
    if pos0 < 0 or pos0 + n > cos.shape[0] or sin.shape[0] != cos.shape[0] \
            or sin.shape[1] != half:
        raise ValueError("rope: positions outside the tables")
    if n and (offset < 0 or offset + 2 * half > head_stride
              or (nheads - 1) * head_stride + offset + 2 * half > x.shape[1]):
        raise ValueError("rope: rotated columns fall outside the rows")
    if n == 0 or nheads == 0:
        return
    cdef int nt = _nt(threads, n * nheads * half * 4)
    for t in prange(n, nogil=True, num_threads=nt, schedule="static"):
        pos = pos0 + t
        for h in range(nheads):
            c0 = h * head_stride + offset
            pp_rope_pairs_f32(&x[t, c0], &x[t, c0 + half], &cos[pos, 0], &sin[pos, 0], half, 0)


# --------------------------------------------------------------------------- attention
cdef inline void _softmax_mix(float *sc, int64_t P, const float *v, int64_t v_stride,
                              int64_t dv, float *o) noexcept nogil:
    """o[:dv] = sum_j softmax(sc)[j] * v[j*v_stride : +dv]."""
    cdef float mx = sc[0], z = 0, p
    cdef int64_t j, c
    for j in range(1, P):
        if sc[j] > mx:
            mx = sc[j]
    for c in range(dv):
        o[c] = 0
    for j in range(P):
        p = expf(sc[j] - mx)
        z = z + p
        eng_axpy_f32(p, v + j * v_stride, o, dv)
    p = 1 / z
    for c in range(dv):
        o[c] = o[c] * p


def attention(const float[:, :] q, const float[:, :] kc, const float[:, :] vc, float[:, :] out,
              int64_t pos0, int64_t n_heads, int64_t n_kv_heads, double scale, int threads=1):
    cdef int64_t n = q.shape[0], H = n_heads, Hk = n_kv_heads
    _rows_ok("q", q); _rows_ok("kc", kc); _rows_ok("vc", vc); _rows_ok("out", out)
    if H <= 0 or Hk <= 0 or H % Hk or q.shape[1] % H or vc.shape[1] % Hk:
        raise ValueError("attention: bad head counts")
    cdef int64_t dk = q.shape[1] // H, dv = vc.shape[1] // Hk, grp = H // Hk
    if kc.shape[1] != Hk * dk or out.shape[0] != n or out.shape[1] != H * dv \
            or kc.shape[0] < pos0 + n or vc.shape[0] < pos0 + n or pos0 < 0:
        raise ValueError("attention: shape mismatch")
    if n == 0:
        return
    cdef int64_t ks = kc.strides[0] // 4, vs = vc.strides[0] // 4
    cdef int64_t Pmax = pos0 + n, job, t, h, hk, P, j
    cdef float sc = <float>scale
    cdef float *buf = NULL
    cdef const float *k0 = &kc[0, 0]
    cdef const float *v0 = &vc[0, 0]
    cdef int nt = _nt(threads, n * H * Pmax * (dk + dv))
    with nogil, parallel(num_threads=nt):
        buf = <float *>malloc(Pmax * sizeof(float))
        for job in prange(n * H, schedule="static"):
            t = job // H
            h = job % H
            hk = h // grp
            P = pos0 + t + 1
            eng_attend_f32(&q[t, h * dk], k0 + hk * dk, ks, v0 + hk * dv, vs, P, dk, dv, sc,
                           buf, &out[t, h * dv])
        free(buf)


def mla_attention(const float[:, :] q, const float[:, :] ckv, const float[:, :] kr,
                  const float[:, ::1] wkv_b, double wscale, float[:, :] out, int64_t pos0,
                  int64_t n_heads, int64_t head_dim, double scale, int threads=1):
    cdef int64_t n = q.shape[0], H = n_heads, hd = head_dim
    cdef int64_t kvl = ckv.shape[1], r = kr.shape[1], w = hd + r
    _rows_ok("q", q); _rows_ok("ckv", ckv); _rows_ok("kr", kr); _rows_ok("out", out)
    if q.shape[1] != H * w or wkv_b.shape[0] != 2 * H * hd or wkv_b.shape[1] != kvl \
            or out.shape[0] != n or out.shape[1] != H * hd or pos0 < 0 \
            or ckv.shape[0] < pos0 + n or kr.shape[0] < pos0 + n:
        raise ValueError("mla_attention: shape mismatch")
    if n == 0:
        return
    cdef int64_t cs = ckv.strides[0] // 4, rs = kr.strides[0] // 4
    cdef int64_t Pmax = pos0 + n, job, t, h, P, j, i, c
    cdef float ws = <float>wscale, sc = <float>scale, a
    cdef float *buf = NULL
    cdef float *u = NULL
    cdef float *m = NULL
    cdef const float *qn
    cdef const float *wr
    cdef const float *c0 = &ckv[0, 0]
    cdef const float *r0 = &kr[0, 0]
    cdef int nt = _nt(threads, n * H * (Pmax * (2 * kvl + r) + 2 * hd * kvl))
    with nogil, parallel(num_threads=nt):
        buf = <float *>malloc((Pmax + 2 * kvl) * sizeof(float))
        u = buf + Pmax
        m = u + kvl
        for job in prange(n * H, schedule="static"):
            t = job // H
            h = job % H
            P = pos0 + t + 1
            qn = &q[t, h * w]
            for c in range(kvl):
                u[c] = 0
            for i in range(hd):
                a = qn[i]
                wr = &wkv_b[h * hd + i, 0]
                for c in range(kvl):
                    u[c] = u[c] + a * wr[c]
            for c in range(kvl):
                u[c] = u[c] * ws
            for j in range(P):
                buf[j] = (eng_dot_f32(u, c0 + j * cs, kvl)
                          + eng_dot_f32(qn + hd, r0 + j * rs, r)) * sc
            _softmax_mix(buf, P, c0, cs, kvl, m)
            for i in range(hd):
                out[t, h * hd + i] = eng_dot_f32(&wkv_b[(H + h) * hd + i, 0], m, kvl) * ws
        free(buf)


# --------------------------------------------------------------------------- head, embedding
def head_logits(const float[:, :] h, table, const float[::1] row_scale, float[:, :] out,
                int threads=1):
    """out [n, V] = h @ table^T (int8 rows times row_scale)."""
    cdef int64_t n = h.shape[0], d = h.shape[1], V, v, t
    _rows_ok("h", h); _rows_ok("out", out)
    arr = np.asarray(table)
    if arr.ndim != 2 or arr.shape[1] != d or not arr.flags.c_contiguous:
        raise ValueError("head_logits: table must be C-contiguous [V, d]")
    V = arr.shape[0]
    if out.shape[0] != n or out.shape[1] != V:
        raise ValueError("head_logits: out must be [n, V]")
    cdef const float[:, ::1] tf
    cdef const uint16_t[:, ::1] th
    cdef const int8_t[:, ::1] ti
    cdef int kind
    if arr.dtype == np.float32:
        kind = 0
        tf = arr
    elif arr.dtype == np.float16:
        kind = 1
        th = arr.view(np.uint16)
    elif arr.dtype == np.int8:
        kind = 2
        ti = arr
        if row_scale.shape[0] != V:
            raise ValueError("head_logits: row_scale must have V entries")
    else:
        raise TypeError(f"head_logits: table dtype {arr.dtype} is not float32/float16/int8")
    if n == 0 or V == 0:
        return
    if d == 0:
        out[:, :] = 0
        return
    cdef int nt = _nt(threads, n * V * d // 8)
    cdef int64_t nchunk = (V + 63) // 64, c, v0, v1
    if kind == 2:   # int8 rows, several at a time (eng_dot_i8_rows)
        for c in prange(nchunk, nogil=True, num_threads=nt, schedule="static"):
            v0 = c * 64
            v1 = v0 + 64 if v0 + 64 < V else V
            for t in range(n):
                eng_dot_i8_rows(&ti[v0, 0], d, v1 - v0, &h[t, 0], d, &row_scale[v0], &out[t, v0])
        return
    for v in prange(V, nogil=True, num_threads=nt, schedule="static"):
        for t in range(n):
            if kind == 0:
                out[t, v] = eng_dot_f32(&tf[v, 0], &h[t, 0], d)
            elif kind == 1:
                out[t, v] = eng_dot_f16(&th[v, 0], &h[t, 0], d)
            else:
                out[t, v] = eng_dot_i8(&ti[v, 0], &h[t, 0], d) * row_scale[v]


def embed(table, const float[::1] row_scale, const int32_t[::1] tokens, float[:, :] out,
          int threads=1):
    """out[i] = table[tokens[i]] as float32 (int8 rows times row_scale)."""
    cdef int64_t n = tokens.shape[0], d, V, i, k, tok
    _rows_ok("out", out)
    arr = np.asarray(table)
    if arr.ndim != 2 or not arr.flags.c_contiguous:
        raise ValueError("embed: table must be C-contiguous [V, d]")
    V, d = arr.shape[0], arr.shape[1]
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError("embed: out must be [n, d]")
    for i in range(n):
        if tokens[i] < 0 or tokens[i] >= V:
            raise ValueError("embed: token id out of range")
    cdef const float[:, ::1] tf
    cdef const uint16_t[:, ::1] th
    cdef const int8_t[:, ::1] ti
    if arr.dtype == np.float32:
        tf = arr
        for i in range(n):
            for k in range(d):
                out[i, k] = tf[tokens[i], k]
    elif arr.dtype == np.float16:
        th = arr.view(np.uint16)
        for i in range(n):
            for k in range(d):
                out[i, k] = eng_half_to_float(th[tokens[i], k])
    elif arr.dtype == np.int8:
        ti = arr
        if row_scale.shape[0] != V:
            raise ValueError("embed: row_scale must have V entries")
        for i in range(n):
            tok = tokens[i]
            for k in range(d):
                out[i, k] = (<float>ti[tok, k]) * row_scale[tok]
    else:
        raise TypeError(f"embed: table dtype {arr.dtype} is not float32/float16/int8")


# --------------------------------------------------------------------------- the decode step
cdef size_t _addr(a) except 0:
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
        raise ValueError("decode plan: arrays must be C-contiguous numpy arrays")
    if a.size == 0:
        raise ValueError("decode plan: empty array")
    return <size_t>a.__array_interface__["data"][0]


cdef int _kind(a) except -1:
    if a.dtype == np.float32:
        return 0
    if a.dtype == np.float16:
        return 1
    if a.dtype == np.int8:
        return 2
    raise TypeError(f"decode plan: table dtype {a.dtype} is not float32/float16/int8")


cdef void _tern(eng_tern *t, w, list keep) except *:
    if w is None:
        t.w = NULL
        t.m = t.k = t.stride = 0
        t.scale = 0
        return
    keep.append(w.data)
    t.w = <const uint8_t *>_addr(w.data)
    t.stride = w.data.shape[1]
    t.m = w.m
    t.k = w.k
    t.scale = <float>w.scale


#: attention name (ModelConfig.attention) -> the C enum eng_attention (engine_step.h)
_ATTENTION = {"mha": ENG_ATTN_MHA, "mla": ENG_ATTN_MLA}


cdef class DecodePlan:
    """The weights of a poppins.engine.runtime.Engine as C pointers for eng_decode_step()
    (the Engine's arrays are kept alive by this object)."""
    cdef eng_model M
    cdef eng_layer *L
    cdef list keep

    def __cinit__(self, engine, int kernel=-1):
        cfg = engine.cfg
        self.keep = []
        self.L = <eng_layer *>malloc(cfg.layers * sizeof(eng_layer))
        if self.L == NULL:
            raise MemoryError()
        memset(self.L, 0, cfg.layers * sizeof(eng_layer))
        cdef eng_model *M = &self.M
        cdef eng_layer *Lc
        M.attention = _ATTENTION[cfg.attention]
        mla = M.attention == ENG_ATTN_MLA
        M.dim, M.layers, M.heads = cfg.dim, cfg.layers, cfg.heads
        M.kv_heads, M.head_dim, M.hidden = cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim
        M.kvl = cfg.kv_latent if mla else 0
        M.rope = cfg.rope_width if mla else 0
        M.qlat = (cfg.q_latent_dim or 0) if mla else 0
        M.vocab = cfg.vocab_size
        M.eps = cfg.norm_eps
        keep = self.keep
        for a in (engine.cos, engine.sin, engine.emb, engine.emb_scale, engine.head,
                  engine.head_scale, engine.final_norm):
            keep.append(a)
        M.cos = <const float *>_addr(engine.cos)
        M.sin = <const float *>_addr(engine.sin)
        M.rot_half = engine.cos.shape[1]
        M.rope_rows = engine.cos.shape[0]
        M.emb = <const void *>_addr(engine.emb)
        M.emb_kind = _kind(engine.emb)
        M.emb_scale = <const float *>_addr(engine.emb_scale)
        M.head = <const void *>_addr(engine.head)
        M.head_kind = _kind(engine.head)
        M.head_scale = <const float *>_addr(engine.head_scale)
        M.final_norm = <const float *>_addr(engine.final_norm)
        M.kernel = kernel
        for i, Ly in enumerate(engine.layers):
            Lc = &self.L[i]
            keep.extend([Ly.attn_norm, Ly.ffn_norm])
            Lc.attn_norm = <const float *>_addr(Ly.attn_norm)
            Lc.ffn_norm = <const float *>_addr(Ly.ffn_norm)
            if Ly.q_norm is not None:
                keep.append(Ly.q_norm)
                Lc.q_norm = <const float *>_addr(Ly.q_norm)
            if Ly.kv_norm is not None:
                keep.append(Ly.kv_norm)
                Lc.kv_norm = <const float *>_addr(Ly.kv_norm)
            if Ly.wkv_b_vals is not None:
                keep.append(Ly.wkv_b_vals)
                Lc.wkv_b = <const float *>_addr(Ly.wkv_b_vals)
                Lc.wkv_b_scale = <float>Ly.wkv_b.scale
            _tern(&Lc.wqkv, Ly.wqkv, keep)
            _tern(&Lc.wq, Ly.wq, keep)
            _tern(&Lc.wq_a, Ly.wq_a, keep)
            _tern(&Lc.wq_b, Ly.wq_b, keep)
            _tern(&Lc.wkv_a, Ly.wkv_a, keep)
            _tern(&Lc.wo, Ly.wo, keep)
            _tern(&Lc.w_up, Ly.w_up, keep)
            _tern(&Lc.w_down, Ly.w_down, keep)
        M.L = self.L

    def __dealloc__(self):
        free(self.L)


cdef void _params(eng_sampling *sp, params) except *:
    sp.temperature = float(params.temperature)
    sp.top_k = int(params.top_k)
    sp.top_p = float(params.top_p)
    sp.min_p = float(params.min_p)
    sp.repeat_penalty = float(params.repeat_penalty)
    sp.repeat_last_n = int(params.repeat_last_n)


def sample(const float[::1] logits, params, uint64_t state, const int32_t[::1] recent):
    """(token, new state): the C sampler (same signature as
    poppins.engine.sampling.sample_reference); params: a SamplingParams."""
    cdef eng_sampling sp
    _params(&sp, params)
    cdef int64_t V = logits.shape[0], nr = recent.shape[0]
    if V == 0:
        raise ValueError("sample: empty logits")
    work = np.empty(eng_sample_work_bytes(V), np.uint8)
    cdef uint8_t[::1] wv = work
    cdef int32_t tok
    cdef const int32_t *rp = &recent[0] if nr > 0 else NULL
    with nogil:
        tok = eng_sample(&sp, &state, &logits[0], V, rp, nr, &wv[0])
    return tok, state


cdef class DecodeSession:
    """One session's KV cache arrays (owned by the Python Session) bound to a DecodePlan."""
    cdef DecodePlan plan
    cdef eng_session *S
    cdef float **ca
    cdef float **cb
    cdef list keep
    cdef int64_t ctx, vocab
    cdef object work

    def __cinit__(self, DecodePlan plan, list cache_a, list cache_b, int64_t ctx):
        cdef int64_t L = plan.M.layers, i
        if len(cache_a) != L or len(cache_b) != L:
            raise ValueError("decode session: one pair of caches per layer")
        self.plan = plan
        self.keep = list(cache_a) + list(cache_b)
        self.ctx = ctx
        self.vocab = plan.M.vocab
        self.ca = <float **>malloc(L * sizeof(float *))
        self.cb = <float **>malloc(L * sizeof(float *))
        if self.ca == NULL or self.cb == NULL:
            raise MemoryError()
        for i in range(L):
            for arr in (cache_a[i], cache_b[i]):
                if arr.dtype != np.float32 or arr.shape[0] < ctx or not arr.flags.writeable:
                    raise ValueError("decode session: caches must be writable float32 arrays "
                                     "of ctx rows")
            self.ca[i] = <float *>_addr(cache_a[i])
            self.cb[i] = <float *>_addr(cache_b[i])
        self.S = eng_session_new(&plan.M, self.ca, self.cb, ctx)
        if self.S == NULL:
            raise MemoryError()

    def __dealloc__(self):
        eng_session_free(self.S)
        free(self.ca)
        free(self.cb)

    def fixed_team(self, bint fixed):
        """True: every step with threads > 1 on the team; False: the faster size each time."""
        eng_session_fixed_team(self.S, fixed)

    def choice(self):
        """The team chooser's state (a tuple of ENG_CHOICE_N ints), for a later session's
        set_choice."""
        cdef int64_t c[ENG_CHOICE_N]
        eng_session_choice(self.S, c)
        return tuple(int(c[i]) for i in range(ENG_CHOICE_N))

    def set_choice(self, tuple state):
        cdef int64_t c[ENG_CHOICE_N]
        cdef int i
        if len(state) != ENG_CHOICE_N:
            raise ValueError(f"decode session: a team choice is {ENG_CHOICE_N} integers")
        for i in range(ENG_CHOICE_N):
            c[i] = state[i]
        eng_session_set_choice(self.S, c)

    def tokens(self):
        """(steps run by a team of threads, steps run by one thread) so far."""
        cdef int64_t team = 0, solo = 0
        eng_session_tokens(self.S, &team, &solo)
        return int(team), int(solo)

    def step_sample(self, int token, int64_t pos, float[::1] logits, int threads, params,
                    uint64_t state, const int32_t[::1] recent, int64_t n_recent):
        """Feed one token at pos, then sample the next one from the new logits with the C
        sampler (recent[:n_recent] is the context for the repeat penalty), all without the
        GIL.  Returns (next token, new generator state)."""
        cdef eng_sampling sp
        cdef int rc
        cdef int32_t tok = -1
        _params(&sp, params)
        if logits.shape[0] != self.vocab:
            raise ValueError("decode step: logits must have vocab entries")
        if n_recent < 0 or n_recent > recent.shape[0]:
            raise ValueError("decode step: n_recent out of range")
        if self.work is None:
            self.work = np.empty(eng_sample_work_bytes(self.vocab), np.uint8)
        cdef uint8_t[::1] wv = self.work
        cdef const int32_t *rp = &recent[0] if n_recent > 0 else NULL
        with nogil:
            rc = eng_decode_step(&self.plan.M, self.S, token, pos, &logits[0], threads)
            if rc == 0:
                tok = eng_sample(&sp, &state, &logits[0], self.vocab, rp, n_recent, &wv[0])
        if rc != 0:
            raise ValueError(f"decode step: bad token {token} or position {pos}")
        return tok, state

    def generate(self, int token, int64_t pos, float[::1] logits, int threads, params,
                 uint64_t state, int32_t[::1] history, int64_t n_hist, int64_t max_new,
                 int stop_a, int stop_b):
        """The per-token loop in compiled code, without the GIL: feed ``token`` at ``pos``,
        sample the next token (history[:n] is the repeat-penalty context), append it to
        ``history``, and go on until a stop id, ``max_new`` new tokens, or the end of
        ``history``.  Returns (number of new tokens, new generator state)."""
        cdef eng_sampling sp
        cdef int rc = 0
        cdef int32_t tok = token
        cdef int64_t i = 0, n = n_hist
        _params(&sp, params)
        if logits.shape[0] != self.vocab:
            raise ValueError("decode loop: logits must have vocab entries")
        if n_hist < 1 or n_hist > history.shape[0]:
            raise ValueError("decode loop: n_hist out of range")
        if max_new > history.shape[0] - n_hist:
            max_new = history.shape[0] - n_hist
        if self.work is None:
            self.work = np.empty(eng_sample_work_bytes(self.vocab), np.uint8)
        cdef uint8_t[::1] wv = self.work
        with nogil:
            while i < max_new:
                rc = eng_decode_step(&self.plan.M, self.S, tok, pos + i, &logits[0], threads)
                if rc != 0:
                    break
                tok = eng_sample(&sp, &state, &logits[0], self.vocab, &history[0], n, &wv[0])
                history[n] = tok
                n += 1
                i += 1
                if tok == stop_a or tok == stop_b:
                    break
        if rc != 0:
            raise ValueError(f"decode loop: bad token or position {pos + i}")
        return i, state

    def step(self, int token, int64_t pos, float[::1] logits, int threads=1):
        """Feed one token at position pos; logits[vocab] receives the next-token logits."""
        cdef int rc
        if logits.shape[0] != self.vocab:
            raise ValueError("decode step: logits must have vocab entries")
        with nogil:
            rc = eng_decode_step(&self.plan.M, self.S, token, pos, &logits[0], threads)
        if rc != 0:
            raise ValueError(f"decode step: bad token {token} or position {pos}")


def decode_matvec_available():
    """True when the AVX-512 VNNI decode matrix-vector product (ternary path avx512) runs here."""
    return TERN_AVX512_ID >= 0 and bool(eng_tern_available(TERN_AVX512_ID))


def decode_matvec(const uint8_t[:, ::1] w, int64_t k, const int8_t[::1] x, int32_t[::1] y,
                  int reps=1):
    """y = t @ x with the decode step's AVX-512 VNNI kernel (b256 rows of w, k weights per
    row), called as the step does (through the ternary C API); x is zero-padded internally.
    ``reps`` repeats the product (for timing)."""
    cdef int64_t m = w.shape[0], nb = (k + 255) // 256, i
    cdef int rc = 0
    if not decode_matvec_available():
        raise RuntimeError("the AVX-512 VNNI decode kernel is not available here")
    if x.shape[0] != k or y.shape[0] != m or w.shape[1] < nb * 64:
        raise ValueError("decode_matvec: shape mismatch")
    xp = np.zeros(max(nb * 256, 1), np.int8)
    xp[:k] = np.asarray(x)
    cdef const int8_t[::1] xv = xp
    if m == 0 or k == 0:
        y[:] = 0
        return
    with nogil:
        for i in range(reps):
            rc = eng_tern_matvec(&w[0, 0], w.shape[1], m, k, &xv[0], &y[0], TERN_AVX512_ID)
    if rc != 0:
        raise ValueError(f"decode_matvec: ternary kernel error {rc}")

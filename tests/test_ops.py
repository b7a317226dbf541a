"""Fused kernels (poppins._ops) against their NumPy references, and every kernel's backward
pass against finite differences (float64).

Tolerances (documented here, the reference is poppins/model/reference.py):
* element-wise kernels that do the same float operations in the same order (RMSNorm without
  quantization, RoPE, squared ReLU and its backward, AdamW, embedding) are bit-identical;
* the quantizers may flip a rounding tie when the per-row scale differs in the last bit (the
  mean of squares is accumulated in float64 in a different order): at most 0.1% of the
  entries may differ, and by exactly one quantization step;
* attention and cross-entropy sum in another order and use a polynomial exp (max relative
  error ~2e-7) for float32: relative 2e-5 (float32), 1e-12 (float64).
"""
from __future__ import annotations

import numpy as np
import pytest

from poppins import native
from poppins.model import kernels as K
from poppins.model import reference as R

ops = native.load("ops")
needs_ops = pytest.mark.skipif(ops is None, reason="poppins._ops is not built")
PATHS = ops.build_info()["available"] if ops is not None else []
SHAPES = [(1, 1), (1, 7), (7, 17), (17, 255), (255, 33), (257, 257)]
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=[True, False], ids=["blas-blocks", "loops"])
def attn_impl(request):
    """Attention by blocks of BLAS products, and by the plain loops (the fallback)."""
    if ops is None:
        yield None
        return
    ops.set_attention_blas(request.param)
    yield request.param
    ops.set_attention_blas(True)


@pytest.fixture(params=PATHS or ["none"])
def path(request):
    if ops is None:
        pytest.skip("poppins._ops is not built")
    before = ops.build_info()["kernel"]
    ops.set_kernel(request.param)
    yield request.param
    ops.set_kernel(before)


def rnd(shape, dtype, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def readonly(a, tmp_path, name):
    """A read-only memmap holding a copy of a."""
    p = tmp_path / f"{name}.bin"
    a = np.ascontiguousarray(a)
    a.tofile(p)
    return np.memmap(p, dtype=a.dtype, mode="r", shape=a.shape)


def assert_quant_close(got, ref, x_rows_absmax):
    """Quantized outputs: equal except rare rounding-tie flips of exactly one step."""
    r = 1e-6 if got.dtype == np.float32 else 1e-13
    diff = ~np.isclose(got, ref, rtol=r, atol=0)
    if not diff.any():
        return
    step = (x_rows_absmax / 127.0)[:, None] * np.ones_like(got)
    assert diff.mean() <= 1e-3, f"{diff.sum()} of {diff.size} differ"
    assert np.allclose(np.abs(got - ref)[diff], step[diff], rtol=1e-3)


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def close_sum(a, b, dtype):
    """Results of sums taken in another order: norm-wise relative 1e-5 (float32) / 1e-12
    (float64), and every entry within 1e-4 (1e-11) of the largest magnitude."""
    r = 1e-5 if dtype == np.float32 else 1e-12
    assert np.linalg.norm(a - b) <= r * np.linalg.norm(b) + 1e-30
    assert np.max(np.abs(a - b), initial=0) <= 10 * r * np.max(np.abs(b), initial=0) + 1e-30


def both(fn, args, threads, outs):
    """Run compiled (threads) and reference on copies of the output arrays."""
    a = [o.copy() for o in outs]
    b = [o.copy() for o in outs]
    ra = getattr(K, fn)(*args(a), threads=threads)
    rb = getattr(K, fn)(*args(b), threads=1, use_reference=True)
    return a, b, ra, rb


# ----------------------------------------------------------------------------- compiled == ref
@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_rmsnorm_and_quantizers(path, dtype, n, d, threads, tmp_path):
    x = readonly(rnd((n, d), dtype, 1, 3.0), tmp_path, "x")
    g = readonly(rnd(d, dtype, 2) + 1, tmp_path, "g")
    for quant in (False, True):
        (o1, r1), (o2, r2), _, _ = both(
            "rmsnorm_quant_fwd", lambda o: (x, g, o[0], o[1], 1e-5, quant),
            threads=threads, outs=[np.zeros((n, d), dtype), np.zeros(n, dtype)])
        assert np.array_equal(r1, r2) or np.allclose(r1, r2, rtol=1e-7 if dtype == np.float32
                                                      else 1e-15)
        if quant:
            y = (np.asarray(x) * r2[:, None]) * np.asarray(g)
            assert_quant_close(o1, o2, np.abs(y).max(axis=1))
        else:
            assert np.allclose(o1, o2, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)
    (a,), (b,), _, _ = both("act_quant", lambda o: (x, o[0]), threads=threads,
                            outs=[np.zeros((n, d), dtype)])
    assert_quant_close(a, b, np.abs(np.asarray(x)).max(axis=1))
    u = readonly(rnd((n, d), dtype, 3), tmp_path, "u")
    for quant in (False, True):
        (a,), (b,), _, _ = both("relu2_quant_fwd", lambda o: (u, o[0], quant), threads=threads,
                                outs=[np.zeros((n, d), dtype)])
        if quant:
            assert_quant_close(a, b, (np.maximum(np.asarray(u), 0) ** 2).max(axis=1))
        else:
            assert np.array_equal(a, b)
    dy = readonly(rnd((n, d), dtype, 4), tmp_path, "dy")
    (a,), (b,), _, _ = both("relu2_bwd", lambda o: (u, dy, o[0]), threads=threads,
                            outs=[np.zeros((n, d), dtype)])
    assert np.array_equal(a, b)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_rmsnorm_bwd(path, dtype, n, d, threads, tmp_path):
    x = readonly(rnd((n, d), dtype, 1), tmp_path, "x")
    g = rnd(d, dtype, 2) + 1
    rstd = np.zeros(n, dtype)
    K.rmsnorm_quant_fwd(x, g, np.zeros((n, d), dtype), rstd, 1e-5, False, use_reference=True)
    dy = rnd((n, d), dtype, 3)
    for acc in (False, True):
        init = rnd((n, d), dtype, 5)
        (dx1, dg1), (dx2, dg2), _, _ = both(
            "rmsnorm_bwd", lambda o: (x, g, rstd, dy, o[0], o[1], acc), threads=threads,
            outs=[init, np.zeros(d, dtype)])
        assert np.allclose(dx1, dx2, **tol(dtype))
        assert np.allclose(dg1, dg2, **tol(dtype))


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 255, 257, 100003])
@pytest.mark.parametrize("threads", [1, 3])
def test_weight_quant(path, dtype, n, threads, tmp_path):
    w = readonly(rnd(n, dtype, n, 0.02), tmp_path, "w")
    (a,), (b,), sa, sb = both("weight_quant", lambda o: (w, o[0]), threads=threads,
                              outs=[np.zeros(n, dtype)])
    assert sa == pytest.approx(sb, rel=1e-12)
    assert np.mean(~np.isclose(a, b, rtol=1e-12, atol=0)) <= 1e-3
    assert set(np.unique(np.rint(a / dtype(sa)))) <= {-1.0, 0.0, 1.0}
    z = np.zeros(5, dtype)
    assert K.weight_quant(z, np.ones(5, dtype)) == pytest.approx(1e-5)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("nheads,head_stride,offset,rot,width", [
    (3, 8, 0, 8, 40), (1, 6, 2, 4, 7), (5, 17, 5, 12, 90), (2, 2, 0, 2, 4)])
def test_rope(path, dtype, threads, nheads, head_stride, offset, rot, width):
    from poppins.model import rope_tables

    T, B = 7, 3
    cos, sin = rope_tables(11, rot, 10000.0, dtype)
    base = rnd((B * T, width + 3), dtype, 1)
    for inverse in (False, True):
        a, b = base.copy(), base.copy()
        K.rope(a[:, :width], cos, sin, T, nheads, head_stride, offset, inverse, threads)
        K.rope(b[:, :width], cos, sin, T, nheads, head_stride, offset, inverse,
               use_reference=True)
        assert np.array_equal(a, b)
    a = base.copy()
    K.rope(a, cos, sin, T, nheads, head_stride, offset, False, threads)
    K.rope(a, cos, sin, T, nheads, head_stride, offset, True, threads)
    assert np.allclose(a, base, **tol(dtype))


def _seg_start(B, T, seed):
    from poppins.model import segment_starts

    rng = np.random.default_rng(seed)
    seg = np.cumsum(rng.random((B, T)) < 0.15, axis=1)
    return segment_starts(seg, B, T)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("B,T,H,Hk,dqk,dv", [
    (1, 1, 1, 1, 2, 2), (2, 17, 4, 2, 8, 8), (3, 33, 3, 3, 12, 8), (1, 70, 4, 1, 16, 16),
    (2, 129, 2, 1, 8, 4)])
def test_attention(path, attn_impl, dtype, threads, B, T, H, Hk, dqk, dv, tmp_path):
    N = B * T
    # q, k, v as column views of one wide buffer, as the model passes them
    buf = rnd((N, H * dqk + Hk * dqk + Hk * dv + 5), dtype, 1, 1.5)
    q = buf[:, :H * dqk]
    k = buf[:, H * dqk:(H + Hk) * dqk]
    v = buf[:, (H + Hk) * dqk:(H + Hk) * dqk + Hk * dv]
    st = _seg_start(B, T, 2)
    if T > 64:  # any start in [0, t] is allowed, not only contiguous runs
        st = (np.random.default_rng(9).random((B, T)) * np.arange(1, T + 1)).astype(np.int32)
    sc = 1 / np.sqrt(dqk)
    o1, o2 = np.zeros((N, H * dv), dtype), np.zeros((N, H * dv), dtype)
    l1, l2 = np.zeros((B, H, T), dtype), np.zeros((B, H, T), dtype)
    K.attn_fwd(q, k, v, o1, l1, st, H, Hk, sc, threads)
    K.attn_fwd(q, k, v, o2, l2, st, H, Hk, sc, use_reference=True)
    close_sum(o1, o2, dtype)
    close_sum(l1, l2, dtype)
    do = rnd((N, H * dv), dtype, 3)
    outs = []
    for ref in (False, True):
        g = np.full((N, H * dqk + Hk * dqk + Hk * dv), 7, dtype)  # garbage: must be overwritten
        dq = g[:, :H * dqk]
        dk = g[:, H * dqk:(H + Hk) * dqk]
        dvv = g[:, (H + Hk) * dqk:]
        K.attn_bwd(readonly(q, tmp_path, "q"), k, v, o2, l2, do, dq, dk, dvv, st, H, Hk, sc,
                   1 if ref else threads, use_reference=ref)
        outs.append(g)
    close_sum(outs[0], outs[1], dtype)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,V", [(1, 1), (7, 17), (33, 381), (257, 1000)])
@pytest.mark.parametrize("threads", [1, 3])
def test_cross_entropy(path, dtype, n, V, threads):
    rng = np.random.default_rng(n)
    x = rnd((n, V), dtype, 1, 4.0)
    tg = rng.integers(0, V, n).astype(np.int32)
    tg[::5] = -1
    coef = (rng.random(n) * (rng.random(n) < 0.7)).astype(dtype)
    res = []
    for ref in (False, True):
        d, ls = np.zeros_like(x), np.zeros(n, dtype)
        tot = K.cross_entropy(x, tg, coef, d, ls, 1 if ref else threads, use_reference=ref)
        res.append((d, ls, tot))
    assert res[0][2] == pytest.approx(res[1][2], rel=1e-6 if dtype == np.float32 else 1e-12)
    assert np.allclose(res[0][1], res[1][1], **tol(dtype))
    assert np.allclose(res[0][0], res[1][0], rtol=1e-5, atol=1e-7 if dtype == np.float32
                       else 1e-15)
    # in place (dlogits is logits) gives the same
    y = x.copy()
    K.cross_entropy(y, tg, coef, y, np.zeros(n, dtype), threads)
    assert np.array_equal(y, res[0][0])


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 257, 100003])
@pytest.mark.parametrize("threads", [1, 3])
def test_adamw(path, dtype, n, threads):
    p0, g, m0 = rnd(n, dtype, 1), rnd(n, dtype, 2), rnd(n, dtype, 3, 0.1)
    v0 = np.abs(rnd(n, dtype, 4, 0.01))
    res = []
    for ref in (False, True):
        p, m, v = p0.copy(), m0.copy(), v0.copy()
        for step in (1, 2, 7):
            K.adamw(p, g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0.1, step, 1 if ref else threads,
                    use_reference=ref)
        res.append((p, m, v))
    for a, b in zip(*res):
        assert np.array_equal(a, b)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(1, 1), (7, 17), (300, 33), (1000, 257)])
@pytest.mark.parametrize("threads", [1, 3])
def test_embedding(path, dtype, n, d, threads, tmp_path):
    rng = np.random.default_rng(0)
    tab = readonly(rnd((50, d), dtype, 1), tmp_path, "tab")
    tok = rng.integers(0, 50, n).astype(np.int32)
    a, b = np.zeros((n, d), dtype), np.zeros((n, d), dtype)
    K.embed_fwd(tab, tok, a, threads)
    K.embed_fwd(tab, tok, b, use_reference=True)
    assert np.array_equal(a, b)
    dx = rnd((n, d), dtype, 2)
    da, db = rnd((50, d), dtype, 3), None
    db = da.copy()
    K.embed_bwd(da, tok, dx, threads)
    K.embed_bwd(db, tok, dx, use_reference=True)
    assert np.array_equal(da, db)


@needs_ops
def test_build_info_and_kernel_override():
    info = ops.build_info()
    assert isinstance(info["openmp"], bool) and "scalar" in info["available"]
    with pytest.raises(ValueError):
        ops.set_kernel("sparc")


def test_kernel_layer_checks():
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(TypeError):
        K.act_quant(x.astype(np.float16), x)
    with pytest.raises(ValueError):
        K.act_quant(x, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError):
        K.act_quant(np.zeros((6, 4), np.float32).T, x)
    with pytest.raises(ValueError):
        K.act_quant(x, np.zeros((4, 6), np.float32)[::-1])
    with pytest.raises(ValueError):
        K.attn_fwd(x, x, x, x, np.zeros((1, 2, 4), np.float32),
                   np.array([[0, 0, 3, 0]], np.int32), 2, 2, 1.0)


# ----------------------------------------------------------------------------- finite differences
def fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize("use_reference", [False, True])
def test_fd_rmsnorm(use_reference):
    n, d = 5, 7
    x, g, w = rnd((n, d), np.float64, 1), rnd(d, np.float64, 2) + 1, rnd((n, d), np.float64, 3)
    y, r = np.zeros((n, d)), np.zeros(n)

    def loss():
        K.rmsnorm_quant_fwd(x, g, y, r, 1e-5, False, 2, use_reference)
        return float(np.sum(y * w))

    loss()
    dx, dg = np.zeros((n, d)), np.zeros(d)
    K.rmsnorm_bwd(x, g, r, w, dx, dg, False, 2, use_reference)
    assert rel(dx, fd(loss, x)) < 1e-7
    assert rel(dg, fd(loss, g)) < 1e-7


@pytest.mark.parametrize("use_reference", [False, True])
def test_fd_relu2(use_reference):
    u, w = rnd((4, 9), np.float64, 1), rnd((4, 9), np.float64, 2)
    y = np.zeros_like(u)

    def loss():
        K.relu2_quant_fwd(u, y, False, 2, use_reference)
        return float(np.sum(y * w))

    du = np.zeros_like(u)
    K.relu2_bwd(u, w, du, 2, use_reference)
    assert rel(du, fd(loss, u)) < 1e-7


@pytest.mark.parametrize("use_reference", [False, True])
def test_fd_rope(use_reference):
    from poppins.model import rope_tables

    T = 5
    cos, sin = rope_tables(T, 4, 100.0, np.float64)
    x, w = rnd((2 * T, 14), np.float64, 1), rnd((2 * T, 14), np.float64, 2)

    def loss():
        y = x.copy()
        K.rope(y, cos, sin, T, 2, 7, 3, False, 2, use_reference)
        return float(np.sum(y * w))

    gx = w.copy()
    K.rope(gx, cos, sin, T, 2, 7, 3, True, 2, use_reference)
    assert rel(gx, fd(loss, x)) < 1e-7


@pytest.mark.parametrize("use_reference", [False, True])
@pytest.mark.parametrize("H,Hk,dqk,dv", [(2, 2, 4, 4), (4, 2, 3, 5)])
def test_fd_attention(use_reference, attn_impl, H, Hk, dqk, dv):
    B, T = 2, 6
    N = B * T
    q, k = rnd((N, H * dqk), np.float64, 1), rnd((N, Hk * dqk), np.float64, 2)
    v, w = rnd((N, Hk * dv), np.float64, 3), rnd((N, H * dv), np.float64, 4)
    st = _seg_start(B, T, 5)
    st[0, 3:] = 3
    o, lse = np.zeros((N, H * dv)), np.zeros((B, H, T))
    sc = 0.7

    def loss():
        K.attn_fwd(q, k, v, o, lse, st, H, Hk, sc, 2, use_reference)
        return float(np.sum(o * w))

    loss()
    dq, dk, dvv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    K.attn_bwd(q, k, v, o, lse, w, dq, dk, dvv, st, H, Hk, sc, 2, use_reference)
    assert rel(dq, fd(loss, q)) < 1e-7
    assert rel(dk, fd(loss, k)) < 1e-7
    assert rel(dvv, fd(loss, v)) < 1e-7


@pytest.mark.parametrize("use_reference", [False, True])
def test_fd_cross_entropy(use_reference):
    n, V = 6, 11
    x = rnd((n, V), np.float64, 1)
    tg = np.array([1, 0, -1, 10, 3, 3], np.int32)
    coef = np.array([0.1, 0.5, 0.2, 0.0, 0.3, 1.0])

    def loss():
        return K.cross_entropy(x, tg, coef, np.zeros_like(x), np.zeros(n), 2, use_reference)

    d = np.zeros_like(x)
    K.cross_entropy(x, tg, coef, d, np.zeros(n), 2, use_reference)
    assert rel(d, fd(loss, x)) < 1e-7


@pytest.mark.parametrize("use_reference", [False, True])
def test_fd_embedding(use_reference):
    tab = rnd((5, 3), np.float64, 1)
    tok = np.array([1, 4, 1, 0], np.int32)
    w = rnd((4, 3), np.float64, 2)
    y = np.zeros((4, 3))

    def loss():
        K.embed_fwd(tab, tok, y, 2, use_reference)
        return float(np.sum(y * w))

    d = np.zeros_like(tab)
    K.embed_bwd(d, tok, w, 2, use_reference)
    assert rel(d, fd(loss, tab)) < 1e-7


def test_blas_threads_control():
    from poppins.threads import blas_threads, get_blas_threads, set_blas_threads

    before = get_blas_threads()
    if before is None:
        pytest.skip("BLAS thread count is not controllable here")
    with blas_threads(1):
        assert get_blas_threads() == 1
    assert get_blas_threads() == before
    assert set_blas_threads(before)


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("M,N,Kd", [(1, 1, 1), (7, 17, 3), (257, 33, 255), (40, 300, 17),
                                    (600, 96, 64)])
def test_gemm(dtype, threads, M, N, Kd, tmp_path):
    if not K.compiled_gemm():
        pytest.skip("no cblas found in numpy's BLAS")
    rng = np.random.default_rng(M)
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(dtype)
            b = rng.standard_normal((N + 3, Kd + 2) if tb else (Kd, N + 3)).astype(dtype)
            b = b[:N, :Kd] if tb else b[:, :N]          # a row view with a wider stride
            a = readonly(a, tmp_path, "a")
            for acc in (False, True):
                init = rng.standard_normal((M, N)).astype(dtype)
                o1, o2 = init.copy(), init.copy()
                with K.blas_context(threads):
                    K.gemm(a, b, o1, ta, tb, acc, threads)
                K.gemm(a, b, o2, ta, tb, acc, use_reference=True)
                close_sum(o1, o2, dtype)
    with pytest.raises(ValueError):
        K.gemm(np.zeros((3, 4), dtype), np.zeros((5, 6), dtype), np.zeros((3, 6), dtype))

"""One quantizer, one RMSNorm, one RoPE: every compiled path equals poppins/numerics.py.

The per-row int8 activation quantizer has ONE clamp rule (training's: max|y| clamped at 1e-5),
so training (poppins._ops act_quant, quantize + dequantize) and inference (poppins._ternary
quantize_rows, poppins._engine quant_rows / relu2_quant, the NumPy references) give identical
int8 codes and scales on rows of tiny, zero, huge and mixed magnitude, for every compiled
SIMD path and the reference.  RMSNorm and RoPE agree within float rounding (the mean of
squares may be summed in another order); the quantizer codes agree exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from poppins import native, numerics
from poppins.engine import ops_ref
from poppins.engine import reference as tern_ref
from poppins.engine.packing import quantize_activations_ref
from poppins.model import reference as train_ref

WIDTHS = [1, 7, 255, 257, 1000]


def _rows(d: int) -> np.ndarray:
    rng = np.random.default_rng(d)
    g = rng.standard_normal((10, d))
    rows = [
        g[0] * 1e-7,                     # tiny: max|y| far below the 1e-5 clamp
        np.zeros(d),                     # zero
        g[1] * 1e30,                     # huge
        g[2] * np.logspace(-30, 30, d),  # mixed magnitude within the row
        g[3] * (9.99e-6 / max(np.abs(g[3]).max(), 1e-30)),  # max|y| just below 1e-5
        g[4] * (1e-5 / max(np.abs(g[4]).max(), 1e-30)),     # max|y| at the clamp
        g[5] * 3.0,                      # ordinary
        np.full(d, -2.5),                # ties after scaling
        g[6] * 1e-38,                    # near the float32 normal range
        np.r_[127.0, np.full(d - 1, 0.5)] if d > 1 else np.array([127.0]),
    ]
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _paths(mod):
    return mod.build_info()["available"] if mod is not None else []


@pytest.fixture
def ops():
    mod = native.load("ops")
    if mod is None:
        pytest.skip("poppins._ops is not built")
    before = mod.build_info()["kernel"]
    yield mod
    mod.set_kernel(before)


@pytest.mark.parametrize("d", WIDTHS)
def test_references_agree(d):
    x = _rows(d)
    q, s = numerics.act_quant_codes(x)
    assert q.dtype == np.int8 and s.dtype == np.float32
    m = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    np.testing.assert_array_equal(s, np.float32(127) / m)
    for qq, ss in (quantize_activations_ref(x),):
        np.testing.assert_array_equal(qq, q)
        np.testing.assert_array_equal(ss, s)
    for f in (ops_ref.quant_rows, tern_ref.quantize_rows):
        qq, ss = np.empty_like(q), np.empty_like(s)
        f(x, qq, ss, 1)
        np.testing.assert_array_equal(qq, q)
        np.testing.assert_array_equal(ss, s)
    # training's quantize + dequantize is q / s of the same codes and scales
    out = np.empty_like(x)
    train_ref.act_quant(x, out)
    np.testing.assert_array_equal(out, q.astype(np.float32) / s[:, None])
    np.testing.assert_array_equal(numerics.act_quant_dequant(x), out)


@pytest.mark.parametrize("d", WIDTHS)
def test_inference_quantizers_equal_the_reference(d):
    x = _rows(d)
    q, s = numerics.act_quant_codes(x)
    tern = native.load("ternary")
    eng = native.load("engine")
    if tern is None and eng is None:
        pytest.skip("no compiled module")
    fns = []
    if tern is not None:
        fns.append(("ternary.quantize_rows", tern.quantize_rows))
    if eng is not None:
        fns.append(("engine.quant_rows", eng.quant_rows))
    for name, f in fns:
        for threads in (1, 2):
            qq, ss = np.full_like(q, 99), np.zeros_like(s)
            f(x, qq, ss, threads)
            np.testing.assert_array_equal(qq, q, err_msg=name)
            np.testing.assert_array_equal(ss, s, err_msg=name)
    if eng is not None:  # relu2_quant quantizes max(u, 0)^2: feed u = sqrt of |x|
        u = np.sqrt(np.abs(x)).astype(np.float32)
        r = np.maximum(u, 0) ** 2
        q2, s2 = numerics.act_quant_codes(r.astype(np.float32))
        qq, ss = np.empty_like(q2), np.empty_like(s2)
        eng.relu2_quant(u, qq, ss, 1)
        np.testing.assert_array_equal(qq, q2)
        np.testing.assert_array_equal(ss, s2)


@pytest.mark.parametrize("d", WIDTHS)
def test_training_quantizer_equals_inference_codes_on_every_path(ops, d):
    x = _rows(d)
    q, s = numerics.act_quant_codes(x)
    want = q.astype(np.float32) / s[:, None]
    x64 = x.astype(np.float64)
    want64 = numerics.act_quant_dequant(x64)
    for path in _paths(ops):
        ops.set_kernel(path)
        for threads in (1, 2):
            out = np.full_like(x, np.nan)
            ops.act_quant(x, out, threads)
            np.testing.assert_array_equal(out, want, err_msg=path)
            out64 = np.full_like(x64, np.nan)
            ops.act_quant(x64, out64, threads)
            np.testing.assert_array_equal(out64, want64, err_msg=path + " float64")


def _tol(dt):
    return dict(rtol=2e-6, atol=1e-30) if dt == np.float32 else dict(rtol=1e-14, atol=0)


@pytest.mark.parametrize("d", [1, 7, 255, 257])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_rmsnorm_every_path(ops, d, dt):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((9, d)) * np.logspace(-3, 3, 9)[:, None]).astype(dt)
    g = rng.uniform(0.5, 1.5, d).astype(dt)
    want, r = numerics.rmsnorm(x, g, 1e-6)
    for path in _paths(ops):
        ops.set_kernel(path)
        out, rstd = np.empty_like(x), np.empty(9, dt)
        ops.rmsnorm_quant_fwd(x, g, out, rstd, 1e-6, False, 1)
        np.testing.assert_allclose(out, want, **_tol(dt), err_msg=path)
        np.testing.assert_allclose(rstd, r, **_tol(dt), err_msg=path)
    eng = native.load("engine")
    if eng is not None and dt == np.float32:
        out = np.empty_like(x)
        eng.rmsnorm(x, g, 1e-6, out, 1)
        np.testing.assert_allclose(out, want, **_tol(dt))


@pytest.mark.parametrize("rot,nheads,stride,offset", [(2, 1, 2, 0), (8, 3, 10, 2), (64, 4, 96, 32)])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_rope_every_path(ops, rot, nheads, stride, offset, dt):
    T = 13
    cos, sin = numerics.rope_tables(T, rot, 10000.0, dt)
    x = np.random.default_rng(rot).standard_normal((T, nheads * stride)).astype(dt)
    want = x.copy()
    numerics.rope_rotate(want, cos, sin, nheads, stride, offset)
    back = want.copy()
    numerics.rope_rotate(back, cos, -sin, nheads, stride, offset)
    for path in _paths(ops):
        ops.set_kernel(path)
        y = x.copy()
        ops.rope(y, cos, sin, T, nheads, stride, offset, False, 1)
        np.testing.assert_allclose(y, want, **_tol(dt), err_msg=path)
        ops.rope(y, cos, sin, T, nheads, stride, offset, True, 1)
        np.testing.assert_allclose(y, back, **_tol(dt), err_msg=path)
    eng = native.load("engine")
    if eng is not None and dt == np.float32:
        y = x[3:].copy()
        eng.rope(y, cos, sin, 3, nheads, stride, offset, 1)
        np.testing.assert_allclose(y, want[3:], **_tol(dt))

"""Ternary packing, quantizers and kernels: every runnable path equals the NumPy reference
exactly (integer sums), on awkward shapes, with 1 and N threads, on read-only memmaps."""
from __future__ import annotations

import numpy as np
import pytest

from poppins.engine import kernels as K
from poppins.engine import reference as R
from poppins.engine.packing import (TernaryTensor, absmean_quantize, pack_codes,
                                    quantize_activations_ref, unpack_codes)
from poppins.errors import PoppinsError

AVAILABLE = K.available_kernels()
# Every path name is a parameter; those this build/CPU cannot run are skipped (under qemu for
# aarch64 the neon and neondot paths run, on x86 scalar / avx2 / avx512).
KERNELS = [pytest.param(k, marks=pytest.mark.skipif(k not in AVAILABLE, reason=f"{k} not runnable here"))
           for k in K.KERNEL_NAMES]
if not K.is_compiled():  # POPPINS_NO_EXT=1 or no extension: the same checks on the reference
    KERNELS = [pytest.param(None, id="reference")]
SIZES = [1, 7, 17, 255, 257, 1027]
THREADS = [1, 3]


@pytest.fixture(autouse=True)
def _threads_even_for_small_products(monkeypatch):
    """Exercise the multi-threaded row split on small awkward shapes too."""
    monkeypatch.setattr(K, "PARALLEL_MIN_WORK", 0)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _exact(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x.astype(np.int64) @ t.T.astype(np.int64)).astype(np.int32)


# ---------------------------------------------------------------- codes and quantizers

def test_golden_bytes_pin_the_code_mapping():
    # 0b00 = 0, 0b01 = -1, 0b10 = +1; first weight in the lowest bits; row padded to bytes
    t = np.array([[0, -1, 1, 0, 1, 1, -1],
                  [-1, -1, -1, -1, 1, 0, 0]], dtype=np.int8)
    codes = pack_codes(t)
    assert codes.dtype == np.uint8 and codes.shape == (2, 2)
    assert codes.tobytes() == bytes([0b00_10_01_00, 0b00_01_10_10, 0b01_01_01_01, 0b00_00_00_10])
    assert codes.tobytes() == b"\x24\x1a\x55\x02"
    np.testing.assert_array_equal(unpack_codes(codes, 7), t)


def test_unpack_rejects_invalid_code():
    with pytest.raises(ValueError, match="0b11"):
        unpack_codes(np.array([[0b11_00_00_00]], dtype=np.uint8), 4)
    # past k the padding bits are not looked at
    np.testing.assert_array_equal(unpack_codes(np.array([[0b11_00_00_10]], dtype=np.uint8), 1), [[1]])


@pytest.mark.parametrize("m,k", [(1, 1), (3, 5), (17, 255), (4, 1027)])
def test_pack_unpack_round_trip(m, k):
    t = _rng(m * k).integers(-1, 2, (m, k)).astype(np.int8)
    np.testing.assert_array_equal(unpack_codes(pack_codes(t), k), t)


def test_absmean_rounds_half_to_even_and_clips():
    t, s = absmean_quantize(np.array([[0.5, -0.5, 1.5, -1.5]], dtype=np.float32))
    assert s == 1.0
    np.testing.assert_array_equal(t, [[0, 0, 1, -1]])
    w = np.array([[0.5, -1.5, 0.1, 2.0]], dtype=np.float32)
    t, s = absmean_quantize(w)
    assert s == pytest.approx(1.025)
    np.testing.assert_array_equal(t, [[0, -1, 0, 1]])
    t, s = absmean_quantize(np.zeros((2, 3), np.float32))
    assert s == 1.0 and not t.any()


def test_ternary_tensor_from_float():
    w = _rng(3).standard_normal((5, 9)).astype(np.float32)
    tt = TernaryTensor.from_float(w)
    t, s = absmean_quantize(w)
    assert tt.scale == s and tt.shape == (5, 9)
    np.testing.assert_array_equal(tt.values(), t)
    np.testing.assert_array_equal(tt.dequantize(), t.astype(np.float32) * np.float32(s))


def test_activation_quantization_half_to_even():
    x = np.array([[127.0, 63.5, 62.5, -0.5, 0.5, 1.5, 2.5, -2.5, -127.0],
                  [0.0] * 9], dtype=np.float32)
    q, s = K.quantize_activations(x)
    assert s.dtype == np.float32
    # an all-zero row: max|x| clamped at 1e-5 (the training rule, poppins.numerics)
    np.testing.assert_array_equal(s, [1.0, np.float32(127) / np.float32(1e-5)])
    np.testing.assert_array_equal(q[0], [127, 64, 62, 0, 0, 2, 2, -2, -127])
    assert not q[1].any()
    qr, sr = quantize_activations_ref(x)
    np.testing.assert_array_equal(q, qr)
    np.testing.assert_array_equal(s, sr)


@pytest.mark.parametrize("n,k", [(1, 1), (3, 7), (17, 255), (5, 1027), (64, 300)])
def test_activation_quantization_matches_reference(n, k):
    rng = _rng(n + k)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)
    x[0, :] = 0.0 if n > 2 else x[0, :]
    if n > 3:
        x[1, :] = np.float32(1e-40)  # 127 / max overflows: treated as a zero row
    for threads in THREADS:
        q, s = K.quantize_activations(x, threads=threads)
        qr, sr = quantize_activations_ref(x)
        np.testing.assert_array_equal(q, qr)
        np.testing.assert_array_equal(s, sr)
    q1, s1 = K.quantize_activations(x[-1])
    np.testing.assert_array_equal(q1, qr[-1])
    assert s1.shape == () and s1 == sr[-1]


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("k", [1, 4, 255, 256, 257, 1027])
def test_repack_matches_reference_layout(k):
    m = 5
    t = _rng(k).integers(-1, 2, (m, k)).astype(np.int8)
    codes = pack_codes(t)
    got = np.full((m, R.row_bytes(k)), 0xFF, np.uint8)
    exp = np.full((m, R.row_bytes(k)), 0xFF, np.uint8)
    mod = K._backend()
    assert mod.repack(codes, k, got, 1) == 0
    assert R.repack(codes, k, exp, 1) == 0
    np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(R.unpack_kernel_layout(got, k), t)
    # padding past k decodes to zero weights (u = 1)
    full = R.unpack_kernel_layout(got, R.row_bytes(k) * 4)
    assert not full[:, k:].any()


def test_repack_counts_invalid_codes():
    codes = np.array([[0b11_00_11_00, 0b11_00]], dtype=np.uint8)  # k = 5: two 0b11 inside, one past
    out = np.empty((1, 64), np.uint8)
    assert K._backend().repack(codes, 5, out, 1) == 2
    assert R.repack(codes, 5, out, 1) == 2
    with pytest.raises(ValueError, match="invalid"):
        K.PackedTernary.from_tensor(TernaryTensor(codes, (1, 5), 1.0))


def test_block_layout_golden():
    # weight i = 256 b + 64 s + j sits in byte 64 b + j at shift 2 s, as u = t + 1
    k = 300
    t = np.zeros((1, k), np.int8)
    t[0, 0] = 1      # b0 s0 j0 -> byte 0 bits 0-1 = 2
    t[0, 65] = -1    # b0 s1 j1 -> byte 1 bits 2-3 = 0
    t[0, 255] = 1    # b0 s3 j63 -> byte 63 bits 6-7 = 2
    t[0, 299] = -1   # b1 s0 j43 -> byte 64 + 43 bits 0-1 = 0
    w = K.PackedTernary.from_values(t)
    b = w.data[0]
    assert b.shape == (128,)
    assert b[0] == 0b01_01_01_10
    assert b[1] == 0b01_01_00_01
    assert b[63] == 0b10_01_01_01
    assert b[64 + 43] == 0b01_01_01_00
    assert b[2] == 0b01_01_01_01 and b[64 + 44] == 0b01_01_01_01


# ---------------------------------------------------------------- kernels vs reference

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("k", SIZES)
def test_kernels_exact(kernel, m, k):
    rng = _rng(m * 10007 + k)
    t = rng.integers(-1, 2, (m, k)).astype(np.int8)
    w = K.PackedTernary.from_values(t)
    x = rng.integers(-128, 128, (6, k)).astype(np.int8)
    exp = _exact(t, x)
    ref = np.empty_like(exp)
    R.matmul(w.data, k, x, ref)
    np.testing.assert_array_equal(ref, exp)
    for threads in THREADS:
        np.testing.assert_array_equal(K.matvec_int(w, x[0], threads=threads, kernel=kernel), exp[0])
        np.testing.assert_array_equal(K.matmul_int(w, x, threads=threads, kernel=kernel), exp)
        np.testing.assert_array_equal(K.matmul_int(w, x[:1], threads=threads, kernel=kernel), exp[:1])
        np.testing.assert_array_equal(K.matmul_int(w, x[:3], threads=threads, kernel=kernel), exp[:3])


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_extreme_values_do_not_saturate(kernel):
    k = 4096 + 3
    t = np.concatenate([np.full((1, k), -1), np.full((1, k), 1), np.zeros((1, k))]).astype(np.int8)
    x = np.stack([np.full(k, -128), np.full(k, 127), np.tile([-128, 127], k)[:k]]).astype(np.int8)
    w = K.PackedTernary.from_values(t)
    exp = _exact(t, x)
    assert exp[0, 0] == 128 * k
    for threads in THREADS:
        np.testing.assert_array_equal(K.matmul_int(w, x, threads=threads, kernel=kernel), exp)
        for c in range(3):
            np.testing.assert_array_equal(K.matvec_int(w, x[c], threads=threads, kernel=kernel), exp[c])


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_larger_and_more_threads(kernel):
    rng = _rng(42)
    m, k, n = 1100, 2304 + 77, 37
    t = rng.integers(-1, 2, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (n, k)).astype(np.int8)
    w = K.PackedTernary.from_values(t, threads=2)
    exp = _exact(t, x)
    for threads in (1, 2, 4):
        np.testing.assert_array_equal(K.matmul_int(w, x, threads=threads, kernel=kernel), exp)
        np.testing.assert_array_equal(K.matvec_int(w, x[5], threads=threads, kernel=kernel), exp[5])


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_on_readonly_memmaps(kernel, tmp_path):
    rng = _rng(7)
    m, k, n = 257, 1027, 5
    t = rng.integers(-1, 2, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (n, k)).astype(np.int8)
    codes = pack_codes(t)
    codes.tofile(tmp_path / "codes.bin")
    x.tofile(tmp_path / "x.bin")
    codes_mm = np.memmap(tmp_path / "codes.bin", dtype=np.uint8, mode="r", shape=codes.shape)
    x_mm = np.memmap(tmp_path / "x.bin", dtype=np.int8, mode="r", shape=x.shape)
    assert not codes_mm.flags.writeable and not x_mm.flags.writeable
    w = K.PackedTernary.from_tensor(TernaryTensor(codes_mm, (m, k), 0.5))
    # a read-only kernel-layout buffer too
    w.data.tofile(tmp_path / "w.bin")
    w_mm = np.memmap(tmp_path / "w.bin", dtype=np.uint8, mode="r", shape=w.data.shape)
    w_ro = K.PackedTernary(w_mm, m, k, 0.5)
    exp = _exact(t, x)
    for ww in (w, w_ro):
        for threads in THREADS:
            np.testing.assert_array_equal(K.matmul_int(ww, x_mm, threads=threads, kernel=kernel), exp)
            np.testing.assert_array_equal(K.matvec_int(ww, x_mm[2], threads=threads, kernel=kernel), exp[2])


def test_ternary_linear_float_wrapper():
    rng = _rng(11)
    wf = rng.standard_normal((33, 70)).astype(np.float32)
    tt = TernaryTensor.from_float(wf)
    w = K.PackedTernary.from_tensor(tt)
    x = rng.standard_normal((4, 70)).astype(np.float32)
    y = K.ternary_linear(w, x)
    q, s = quantize_activations_ref(x)
    exp = _exact(tt.values(), q).astype(np.float32) * (np.float32(tt.scale) / s)[:, None]
    np.testing.assert_array_equal(y, exp)
    np.testing.assert_array_equal(K.ternary_linear(w, x[1]), exp[1])
    # and it approximates the float product
    approx = x @ tt.dequantize().T
    assert np.abs(y - approx).max() < 0.05 * np.abs(approx).max()


def test_reference_backend_gives_the_same_results(monkeypatch):
    rng = _rng(5)
    t = rng.integers(-1, 2, (19, 300)).astype(np.int8)
    x = rng.integers(-128, 128, (3, 300)).astype(np.int8)
    w = K.PackedTernary.from_values(t)
    compiled = K.matmul_int(w, x)
    monkeypatch.setattr(K, "_backend_mod", R)
    assert K.active_kernel() == "reference"
    np.testing.assert_array_equal(K.matmul_int(w, x), compiled)
    np.testing.assert_array_equal(K.matvec_int(w, x[1]), compiled[1])
    np.testing.assert_array_equal(K.matmul_int(K.PackedTernary.from_values(t), x), compiled)


def test_no_ext_switch_selects_the_reference(monkeypatch):
    from poppins import native

    monkeypatch.setenv("POPPINS_NO_EXT", "1")
    native.reset()
    K.reset_backend()
    try:
        assert not K.is_compiled() and K.kernel_info()["backend"] == "reference"
        w = K.PackedTernary.from_values(np.array([[1, -1, 0, 1, 1]], np.int8))
        np.testing.assert_array_equal(K.matvec_int(w, np.array([3, 4, 5, -128, 1], np.int8)), [-128])
    finally:
        monkeypatch.delenv("POPPINS_NO_EXT")
        native.reset()
        K.reset_backend()


# ---------------------------------------------------------------- the Python layer

def test_kernel_override_errors(monkeypatch):
    monkeypatch.setenv("POPPINS_KERNEL", "sse9")
    with pytest.raises(PoppinsError, match="POPPINS_KERNEL='sse9': unknown kernel path"):
        K.resolve_kernel()
    missing = [k for k in K.KERNEL_NAMES if k not in AVAILABLE]
    if K.is_compiled() and missing:
        monkeypatch.setenv("POPPINS_KERNEL", missing[0])
        with pytest.raises(PoppinsError, match="not available"):
            K.matvec_int(K.PackedTernary.from_values(np.ones((1, 4), np.int8)), np.ones(4, np.int8))
    monkeypatch.setenv("POPPINS_KERNEL", "scalar")
    assert K.active_kernel() == ("scalar" if K.is_compiled() else "reference")
    assert K.active_kernel("auto") in AVAILABLE + ["reference"]
    with pytest.raises(PoppinsError, match="kernel='nope'"):
        K.resolve_kernel("nope")


def test_expected_kernels():
    """scripts/test_arm.sh says which paths qemu's CPU must offer (no silent fallback)."""
    import os

    want = os.environ.get("POPPINS_EXPECT_KERNELS")
    if not want:
        pytest.skip("POPPINS_EXPECT_KERNELS is not set")
    assert K.is_compiled()
    assert ",".join(AVAILABLE) == want


def test_build_info_and_backend_info():
    info = K.kernel_info()
    assert {"openmp", "kernel", "available", "backend"} <= set(info)
    if K.is_compiled():
        assert info["available"][-1] == "scalar"
        assert info["kernel"] in info["available"]
        import poppins

        fam = poppins.backend_info()["extensions"]["ternary"]
        assert fam["backend"] == "compiled" and fam["kernel"] in fam["available"]


def test_input_checks():
    w = K.PackedTernary.from_values(np.ones((3, 10), np.int8))
    with pytest.raises(TypeError, match="int8"):
        K.matvec_int(w, np.ones(10, np.int16))
    with pytest.raises(ValueError, match="k=10"):
        K.matvec_int(w, np.ones(11, np.int8))
    with pytest.raises(ValueError, match="columns"):
        K.matmul_int(w, np.ones((2, 9), np.int8))
    with pytest.raises(TypeError, match="float32"):
        K.quantize_activations(np.ones(3))
    # non-contiguous inputs are accepted (copied)
    x = np.arange(40, dtype=np.int8).reshape(2, 20)[:, ::2]
    np.testing.assert_array_equal(K.matmul_int(w, x), _exact(np.ones((3, 10), np.int8), x))
    y = K.matvec_int(w, np.ones(10, np.int8), out=np.zeros(3, np.int32))
    np.testing.assert_array_equal(y, [10, 10, 10])


def test_k_bound_is_enforced():
    # int32 accumulators hold 256 * k: k is limited to K_MAX = 2^23 (ext/ternary/ternary.h)
    assert K.K_MAX == 1 << 23
    with pytest.raises(ValueError, match="out of range"):
        K.PackedTernary(np.zeros((1, 64), np.uint8), 1, K.K_MAX + 1, 1.0)
    k = K.K_MAX + 1
    w = np.zeros((1, R.row_bytes(k)), np.uint8)
    x = np.zeros(k, np.int8)
    with pytest.raises(ValueError, match="out of range"):
        K._backend().matvec(w, k, x, np.zeros(1, np.int32), 1, -1)


def test_empty_shapes():
    w = K.PackedTernary.from_values(np.zeros((0, 5), np.int8))
    assert K.matvec_int(w, np.ones(5, np.int8)).shape == (0,)
    w = K.PackedTernary.from_values(np.zeros((4, 0), np.int8))
    np.testing.assert_array_equal(K.matvec_int(w, np.ones(0, np.int8)), [0, 0, 0, 0])
    np.testing.assert_array_equal(K.matmul_int(w, np.ones((2, 0), np.int8)), np.zeros((2, 4)))
    w = K.PackedTernary.from_values(np.ones((4, 5), np.int8))
    assert K.matmul_int(w, np.ones((0, 5), np.int8)).shape == (0, 4)

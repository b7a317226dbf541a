"""Ternary kernels vs NumPy float32 on the same shapes, one thread, ratios in the same run.

    python -m pytest bench/bench_ternary.py --benchmark-only -q -s
    POPPINS_BENCH_FULL=1 python -m pytest bench/bench_ternary.py --benchmark-only -q -s

Each case times ``poppins.engine.kernels.matvec_int`` (n = 1, decode) or ``matmul_int``
(n = 128, prefill) on the best kernel path (or POPPINS_KERNEL), with threads=1, on int8
activations and a ternary (m, k) matrix in the kernel layout, and NumPy's ``A @ x`` with a
float32 (m, k) matrix, BLAS held to one thread.  Throughput counts 2*m*k*n operations.
The default run covers three shapes of the grid; POPPINS_BENCH_FULL=1 runs all of
k in {1024, 2048, 4096} x m in {1024, 4096, 8192}.  Targets: >= 4x NumPy at n = 1 and
>= 2x at n = 128.  Each result prints a line and lands in benchmark.extra_info.

BLAS threads: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set to 1 before
NumPy is imported (when this module is the first to import it), and the OpenBLAS already
loaded in the process is also told through ctypes (``openblas_set_num_threads`` and the
``scipy_openblas`` spellings used by NumPy's wheels).  extra_info["blas_threads"] records how.
"""
from __future__ import annotations

import ctypes
import os
import time

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from poppins.engine import kernels as K  # noqa: E402

FULL = os.environ.get("POPPINS_BENCH_FULL", "").strip().lower() in ("1", "true", "yes", "on")
GRID = [(k, m) for k in (1024, 2048, 4096) for m in (1024, 4096, 8192)]
DEFAULT = [(1024, 1024), (4096, 4096), (2048, 8192)]
SHAPES = GRID if FULL else DEFAULT
TARGET = {1: 4.0, 128: 2.0}


def _limit_blas_threads() -> str:
    """Tell every loaded OpenBLAS to use one thread; returns how it was done."""
    done = []
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower()
                           and line.split()[-1].startswith("/")})
    except OSError:
        libs = []
    for lib in libs:
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                    "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            fn = getattr(dll, sym, None)
            if fn is not None:
                fn(1)
                done.append(f"{os.path.basename(lib)}:{sym}(1)")
                break
    env = f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"
    return "; ".join(done + [env])


BLAS = _limit_blas_threads()

_cache: dict = {}


def _operands(m: int, k: int, n: int):
    key = (m, k)
    if key not in _cache:
        _cache.clear()  # keep one shape in memory at a time (8192 x 4096 f32 is 128 MiB)
        rng = np.random.default_rng(m * 31 + k)
        t = rng.integers(-1, 2, (m, k), dtype=np.int8)
        w = K.PackedTernary.from_values(t, 0.01)
        a = rng.standard_normal((m, k), dtype=np.float32)
        _cache[key] = (w, a)
    w, a = _cache[key]
    rng = np.random.default_rng(n)
    xq = rng.integers(-127, 128, (n, k), dtype=np.int8)
    xf = rng.standard_normal((k, n), dtype=np.float32) if n > 1 else rng.standard_normal(k, dtype=np.float32)
    return w, a, xq, xf


def _best(fn, min_time=0.3, max_rounds=200) -> float:
    fn()
    best, spent, rounds = float("inf"), 0.0, 0
    while (spent < min_time or rounds < 5) and rounds < max_rounds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, rounds = min(best, dt), spent + dt, rounds + 1
    return best


@pytest.mark.parametrize("n", [1, 128], ids=["matvec", "matmul128"])
@pytest.mark.parametrize("k,m", SHAPES, ids=[f"k{k}-m{m}" for k, m in SHAPES])
def test_ternary_vs_numpy(benchmark, k, m, n):
    w, a, xq, xf = _operands(m, k, n)
    kernel = K.active_kernel()
    if n == 1:
        x1 = xq[0]
        out = np.empty(m, np.int32)
        ours = lambda: K.matvec_int(w, x1, threads=1, out=out)  # noqa: E731
    else:
        out = np.empty((n, m), np.int32)
        ours = lambda: K.matmul_int(w, xq, threads=1, out=out)  # noqa: E731
    peer = lambda: a @ xf  # noqa: E731

    t_numpy = _best(peer)
    benchmark.pedantic(ours, rounds=max(5, int(0.3 / max(_best(ours, 0.05), 1e-6))), iterations=1,
                       warmup_rounds=1)
    t_ours = benchmark.stats.stats.min
    t_numpy = min(t_numpy, _best(peer, 0.1))  # numpy again after ours: same conditions
    ops = 2.0 * m * k * n
    ratio = t_numpy / t_ours
    info = {"kernel": kernel, "m": m, "k": k, "n": n, "ops": ops,
            "gops_poppins": ops / t_ours / 1e9, "gops_numpy_f32": ops / t_numpy / 1e9,
            "ratio_vs_numpy": ratio, "target": TARGET[n], "blas_threads": BLAS}
    benchmark.extra_info.update(info)
    print(f"\n[ternary {kernel}] m={m} k={k} n={n}: poppins {info['gops_poppins']:.1f} GOP/s, "
          f"numpy f32 {info['gops_numpy_f32']:.1f} GOP/s, ratio {ratio:.2f}x "
          f"(target {TARGET[n]:.0f}x)")

"""poppins against llama.cpp, and both against the C streaming-read bound, in one run.

    python bench/bench_llamacpp.py matvec [--kernel avx2] [--threads 1,2] [--rounds 7]
    python bench/bench_llamacpp.py models [--variant native|avx2] [--sizes 10M,100M,400M,1B]

``matvec``: poppins' decode matrix-vector product streaming ternary matrices that do not fit in
the caches (about --mib MiB of weights per shape, one matrix after another, as a decode step
reads them), alternated round by round with the C streaming-read loop (bench/stream_read.c)
over a buffer of the same size; prints medians in GB/s of weight bytes and poppins' share of
the bound.

``models``: llama.cpp (built by scripts/llama_cpp.sh from the pinned llama-cpp-python sdist,
cached, skipped when it cannot be built) against poppins on same-shape models, alternating
A B A B, at 1 and 2 threads, tg64 and pp128.

Every report starts with the CPU (lscpu model name), the SIMD flags the two sides used and the
load average, because the figures are only comparable within one run on one machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _stream  # noqa: E402

# decode shapes (m, k) of the model sizes: qkv, wo, up, down
MATVEC_SHAPES = [(3 * 1024, 1024), (4096, 1024), (1024, 4096),
                 (3 * 2048, 2048), (8192, 2048), (2048, 8192)]


def header(kernel: str) -> str:
    flags = sorted(f for f in _stream.cpu_flags() if f.startswith(("avx", "fma", "sse4", "asimd")))
    la = os.getloadavg()
    return (f"CPU: {_stream.cpu_name()} ({os.cpu_count()} CPUs); poppins kernel: {kernel}; "
            f"flags: {' '.join(flags)}\nload average: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


def random_packed(m: int, k: int, rng) -> "object":
    """A random ternary (m, k) matrix directly in the b256 kernel layout (every byte holds
    four valid codes u in {0, 1, 2})."""
    from poppins.engine import kernels as K
    from poppins.engine import reference

    valid = np.array([b for b in range(256) if all((b >> (2 * s)) & 3 != 3 for s in range(4))],
                     np.uint8)
    rb = reference.row_bytes(k)
    data = valid[rng.integers(0, len(valid), (m, rb), dtype=np.int32)]
    return K.PackedTernary(np.ascontiguousarray(data), m, k, 1.0)


def cmd_matvec(args) -> int:
    from poppins.engine import kernels as K

    kernel = K.active_kernel(args.kernel)
    print(header(kernel))
    sr = _stream.load()
    rng = np.random.default_rng(0)
    threads = [int(t) for t in args.threads.split(",")]
    target = args.mib << 20
    bound_buf = sr.buffer(target)
    print(f"{'m x k':>12} {'thr':>3} {'poppins GB/s':>12} {'C read GB/s':>11} {'share':>6}")
    for m, k in MATVEC_SHAPES:
        one = random_packed(m, k, rng)
        copies = max(1, target // one.data.nbytes)
        mats = [one] + [K.PackedTernary(one.data.copy(), m, k, 1.0) for _ in range(copies - 1)]
        nbytes = sum(w.data.nbytes for w in mats)
        x = rng.integers(-127, 128, k, dtype=np.int8)
        y = np.empty(m, np.int32)
        for t in threads:
            ours, bound = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for w in mats:
                    K.matvec_int(w, x, threads=t, kernel=args.kernel, out=y)
                ours.append(nbytes / (time.perf_counter() - t0) / 1e9)
                bound.append(sr.gbps(bound_buf, t))
            po, bo = statistics.median(ours), statistics.median(bound)
            print(f"{m:>5} x {k:<5} {t:>3} {po:>12.2f} {bo:>11.2f} {po / bo:>6.2f}", flush=True)
        del mats, one
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mv = sub.add_parser("matvec", help="decode matvec GB/s vs the C streaming-read bound")
    mv.add_argument("--kernel", default=None, help="scalar|avx2|avx512 (default: POPPINS_KERNEL or best)")
    mv.add_argument("--threads", default="1,2")
    mv.add_argument("--rounds", type=int, default=7)
    mv.add_argument("--mib", type=int, default=768, help="MiB of weights per shape (> the caches)")
    args = ap.parse_args(argv)
    if args.cmd == "matvec":
        return cmd_matvec(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""poppins against llama.cpp, and both against the C streaming-read bound, in one run.

    python bench/bench_llamacpp.py matvec [--kernel avx2] [--threads 1,2] [--rounds 7]
    python bench/bench_llamacpp.py models [--variant native|avx2] [--sizes 10M,100M,400M,1B] [--busy 1]

``matvec``: poppins' decode matrix-vector product streaming ternary matrices that do not fit in
the caches (about --mib MiB of weights per shape, one matrix after another, as a decode step
reads them), alternated round by round with the C streaming-read loop (bench/stream_read.c)
over a buffer of the same size; prints medians in GB/s of weight bytes and poppins' share of
the bound.

``models``: llama.cpp (built by scripts/llama_cpp.sh from the pinned llama-cpp-python sdist,
cached, skipped when it cannot be built) against poppins on same-shape models, alternating
A B A B, at 1 and 2 threads, tg64 and pp128; ``--busy 1`` runs one competing CPU-bound process
all along (the last column: how many of poppins' two-thread decode steps ran on one thread).

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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)  # run as a script from a clone: the checkout's poppins, not installed
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


# --------------------------------------------------------------------------- models
#: name -> (dim, layers, heads), the issue's shapes (MHA, squared-ReLU FFN of 4 * dim, tied
#: int8 head, vocabulary 8192)
MODEL_SIZES = {"10M": (256, 12, 4), "100M": (768, 14, 12), "400M": (1024, 32, 16),
               "1B": (2048, 20, 16)}
VOCAB, TG, PP = 8192, 64, 128


def llama_cpp_bin(variant: str, mode: str = "build"):
    """The bin dir of the cached llama.cpp build (scripts/llama_cpp.sh; builds it if needed),
    or None with the reason printed (exit code 3 of the script: unavailable)."""
    import subprocess

    if mode == "skip":
        return None
    extra = ["--check"] if mode == "check" else []
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "llama_cpp.sh"), variant, *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"llama.cpp ({variant}) unavailable, skipped: {r.stderr.strip().splitlines()[-1:]}")
        return None
    return r.stdout.strip().splitlines()[-1]


def build_models(directory: str, size: str):
    """(model.poppins, model.gguf) of one size: random ternary weights, written by poppins'
    own writers (engine.modelfile; export.gguf, arcee TQ2_0)."""
    from pathlib import Path

    dim, layers, heads = MODEL_SIZES[size]
    pp_path = Path(directory) / f"random-{size}.poppins"
    gg_path = Path(directory) / f"random-{size}.gguf"
    if pp_path.exists() and gg_path.exists():
        return pp_path, gg_path
    from poppins.engine.modelfile import load_model_file, write_model_file
    from poppins.engine.packing import TernaryTensor, packed_row_bytes
    from poppins.export import Source
    from poppins.export.gguf import write_gguf
    from poppins.model.config import ModelConfig
    from poppins.model.model import param_shapes

    cfg = ModelConfig(vocab_size=VOCAB, dim=dim, layers=layers, heads=heads,
                      context_length=PP + TG + 64)
    rng = np.random.default_rng(7)
    valid = np.array([a | (b << 2) | (c << 4) | (d << 6) for a in range(3) for b in range(3)
                      for c in range(3) for d in range(3)], dtype=np.uint8)
    tensors = {}
    for name, shape, kind in param_shapes(cfg):
        if kind == "bitlinear":
            m, k = shape
            codes = rng.choice(valid, size=(m, packed_row_bytes(k)))
            tensors[name] = TernaryTensor(np.ascontiguousarray(codes), (m, k), 0.02)
        elif kind == "embed":
            tensors[name] = rng.integers(-127, 128, shape, dtype=np.int8)
            tensors[name + ".scale"] = np.full(shape[0], 0.02 / 40, np.float32)
        else:
            tensors[name] = np.ones(shape, np.float32)
    write_model_file(pp_path, config=cfg.to_dict(), tensors=tensors, tokenizer_json="{}",
                     sources={}, default_system=None)
    mf = load_model_file(pp_path)
    write_gguf(Source(ModelConfig.from_dict(dict(mf.config)), mf.tensors, None), gg_path,
               name=f"random-{size}")
    return pp_path, gg_path


def llama_bench(bindir: str, gguf: str, threads: int, what: str) -> float:
    """tokens/s of one llama-bench run (what: "tg" = decode TG tokens, "pp" = prefill PP)."""
    import json
    import subprocess

    pn = ["-p", "0", "-n", str(TG)] if what == "tg" else ["-p", str(PP), "-n", "0"]
    r = subprocess.run([os.path.join(bindir, "llama-bench"), "-m", gguf, *pn, "-t", str(threads),
                        "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    return float(json.loads(r.stdout)[0]["avg_ts"])


def poppins_run(engine, threads: int, what: str, solo: list) -> float:
    """tokens/s of one poppins run; for decode, appends to ``solo`` how many of its steps
    ran on one thread (a two-thread session runs a step on one thread when that is faster at
    the time: see POPPINS_TEAM in the README)."""
    rng = np.random.default_rng(1)
    s = engine.session(threads=threads)
    if what == "pp":
        toks = rng.integers(0, VOCAB, PP)
        t0 = time.perf_counter()
        s.forward(toks)
        return PP / (time.perf_counter() - t0)
    tok = int(np.argmax(s.forward([1])))
    t0 = time.perf_counter()
    for _ in range(TG):
        tok = int(np.argmax(s.forward([tok])))
    dt = time.perf_counter() - t0
    s.keep_team_choice()          # as the API does between answers
    solo.append(s.thread_steps[1] if threads > 1 else 0)
    return TG / dt


def start_busy(n: int) -> list:
    """n competing CPU-bound processes (a busy machine), killed by stop_busy()."""
    import subprocess
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(procs: list) -> None:
    for p in procs:
        p.kill()
        p.wait()


def cmd_models(args) -> int:
    from poppins.engine import kernels as K

    if args.variant == "avx2":
        os.environ["POPPINS_KERNEL"] = "avx2"
    kernel = K.active_kernel()
    print(header(kernel) + f"\nllama.cpp variant: {args.variant}")
    bindir = llama_cpp_bin(args.variant, args.llama)
    busy = start_busy(args.busy)
    try:
        return _models(args, bindir)
    finally:
        stop_busy(busy)


def _models(args, bindir) -> int:
    import tempfile

    from poppins.engine.runtime import Engine

    if args.busy:
        print(f"with {args.busy} competing CPU-bound process{'es' if args.busy > 1 else ''} "
              "running all along")
    sr = _stream.load()
    buf = sr.buffer(512 << 20)
    threads = [int(t) for t in args.threads.split(",")]
    work = args.dir or tempfile.mkdtemp(prefix="poppins-bench-llamacpp-")
    print(f"{'model':>5} {'thr':>3} {'what':>4} {'poppins':>9} {'llama.cpp':>9} {'ratio':>6} "
          f"{'C read GB/s':>11} {'pop share':>9} {'MiB/tok':>7} {'1-thr steps':>11}")
    for size in args.sizes.split(","):
        pp_path, gg_path = build_models(work, size)
        for t in threads:
            engine = Engine.load(pp_path, threads=t, verify=False)
            nbytes = engine.weight_bytes_per_token()
            for what in ("tg", "pp"):
                ours, theirs, bw, solo = [], [], [], []
                for _ in range(args.rounds):
                    if bindir:
                        theirs.append(llama_bench(bindir, str(gg_path), t, what))
                    ours.append(poppins_run(engine, t, what, solo))
                    bw.append(sr.gbps(buf, t))
                po, b = statistics.median(ours), statistics.median(bw)
                th = statistics.median(theirs) if theirs else float("nan")
                share = po * nbytes / (b * 1e9) if what == "tg" else float("nan")
                print(f"{size:>5} {t:>3} {what}{TG if what == 'tg' else PP:<3} {po:>8.1f} {th:>9.1f} "
                      f"{po / th:>6.2f} {b:>11.2f} {share:>9.2f} {nbytes / 2**20:>7.1f} "
                      f"{(f'{sum(solo)}/{len(solo) * TG}' if solo and t > 1 else '-'):>11}",
                      flush=True)
            del engine
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
    md = sub.add_parser("models", help="poppins vs llama.cpp on same-shape random models")
    md.add_argument("--variant", default="native", choices=["native", "avx2"],
                    help="avx2: llama.cpp AVX2-only build and POPPINS_KERNEL=avx2")
    md.add_argument("--sizes", default=",".join(MODEL_SIZES))
    md.add_argument("--threads", default="1,2")
    md.add_argument("--rounds", type=int, default=3)
    md.add_argument("--llama", default="build", choices=["build", "check", "skip"],
                    help="build llama.cpp if needed (default), only use a cached build, or skip it")
    md.add_argument("--dir", default=None, help="where the models are written (kept)")
    md.add_argument("--busy", type=int, default=0,
                    help="run N competing CPU-bound processes all along (a busy machine)")
    args = ap.parse_args(argv)
    from poppins.errors import PoppinsError
    try:
        if args.cmd == "matvec":
            return cmd_matvec(args)
        if args.cmd == "models":
            return cmd_models(args)
    except PoppinsError as e:   # e.g. the gguf package missing: one line, not a traceback
        print(f"bench_llamacpp: {e}", file=sys.stderr)
        return 3
    return 2


if __name__ == "__main__":
    sys.exit(main())

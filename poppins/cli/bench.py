"""``python -m poppins bench``: prompt and generation speed of a model, like llama-bench.

    python -m poppins bench -m .poppins -p 64 -n 32 -r 3 -t 1,2

``ppN``: N prompt tokens in one prefill (matrix-matrix kernel), tokens/s; ``tgN``: N tokens
generated one at a time (matrix-vector kernel, KV cache), tokens/s.  Random token ids, as
llama-bench uses; each test runs ``-r`` times after one warm-up run, mean +- standard deviation.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from ..errors import PoppinsError


def _ints(text: str):
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise PoppinsError(f"expected comma-separated integers, got {text!r}") from None
    return vals


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prompt (pp) and generation (tg) tokens/s",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=".poppins",
                   help="model directory (holding model.poppins) or the file (default ./.poppins)")
    p.add_argument("-p", "--n-prompt", default="64",
                   help="prompt lengths to test, comma-separated (0: skip; default 64)")
    p.add_argument("-n", "--n-gen", default="32",
                   help="generation lengths to test, comma-separated (0: skip; default 32)")
    p.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("-t", "--threads", default="", help="thread counts, comma-separated "
                   "(default: physical cores)")
    p.set_defaults(run=run)


def measure(engine, test: str, n: int, threads: int, reps: int, seed: int = 0):
    """tokens/s of each repetition of ``pp n`` or ``tg n``."""
    cfg = engine.cfg
    if n + (1 if test == "tg" else 0) > cfg.context_length:
        raise PoppinsError(f"{test}{n} needs {n} tokens; the model's context is "
                           f"{cfg.context_length}")
    rng = np.random.default_rng(seed)
    lo = min(125, cfg.vocab_size - 1)
    speeds = []
    for rep in range(reps + 1):
        toks = rng.integers(lo, cfg.vocab_size, size=n + 1).astype(np.int32)
        s = engine.session(threads=threads)
        if test == "pp":
            t0 = time.perf_counter()
            s.forward(toks[:n])
            dt = time.perf_counter() - t0
        else:
            s.forward(toks[:1])
            t0 = time.perf_counter()
            tok = int(toks[1])
            for _ in range(n):
                lg = s.forward([tok])
                tok = int(np.argmax(lg))
            dt = time.perf_counter() - t0
        if rep:
            speeds.append(n / dt)
    return speeds


def run(args) -> int:
    from ..engine.runtime import Engine
    from ..threads import default_threads

    if args.repetitions < 1:
        raise PoppinsError("-r must be at least 1")
    threads = _ints(args.threads) or [default_threads()]
    if any(t < 1 for t in threads):
        raise PoppinsError("-t: thread counts must be positive")
    engine = Engine.load(args.model, threads=max(threads))
    cfg = engine.cfg
    size_mb = engine.path.stat().st_size / 2 ** 20
    params = engine.ternary_params()
    name = f"{cfg.attention} d{cfg.dim} L{cfg.layers}"
    print("| model | size | ternary params | threads | test | t/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for t in threads:
        for test, lens in (("pp", _ints(args.n_prompt)), ("tg", _ints(args.n_gen))):
            for n in lens:
                if n <= 0:
                    continue
                sp = measure(engine, test, n, t, args.repetitions)
                mean = statistics.mean(sp)
                sd = statistics.stdev(sp) if len(sp) > 1 else 0.0
                print(f"| {name} | {size_mb:.2f} MiB | {params / 1e6:.2f} M | {t} | {test}{n} "
                      f"| {mean:.2f} ± {sd:.2f} |")
                sys.stdout.flush()
    print(infer_peak_rss(args.model, max(threads)))
    return 0


def infer_peak_rss(model: str, threads: int) -> str:
    """One line: the peak resident memory of ``poppins infer`` (8 greedy tokens) on ``model``,
    measured in a fresh process (its own ru_maxrss through wait4), next to the file's size."""
    import os
    import subprocess

    from ..engine.runtime import Engine

    size_mb = Engine.load(model, threads=1, verify=False).path.stat().st_size / 2 ** 20
    cmd = [sys.executable, "-m", "poppins", "infer", "-m", str(model), "-p", "Hello",
           "--temp", "0", "-n", "8", "-t", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise PoppinsError(f"infer failed while measuring memory: "
                           f"{stderr.decode(errors='replace').strip()[-300:]}")
    return (f"peak RSS of `poppins infer` (8 tokens, {threads} threads): "
            f"{usage.ru_maxrss / 1024:.0f} MiB (model file {size_mb:.1f} MiB)")

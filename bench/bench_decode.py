"""Decode speed of the engine vs the memory-bandwidth bound, measured in the same run.

    python -m pytest bench/bench_decode.py --benchmark-only -q -s

For random-weight models of about 10M, 100M and 400M ternary parameters (MHA, int8 head,
vocabulary 8192), at 1 and 2 threads: decode tokens/s (one token at a time through the KV
cache, after a 16-token prompt) next to the bound = measured read bandwidth / bytes read per
token (packed ternary codes in the kernel layout + the int8 head + norms; the KV cache of a
short context is negligible).  Read bandwidth: NumPy summing a 512 MiB array (one thread; for
two threads, two Python threads each summing half, NumPy releases the GIL), best of 3.  NumPy's
``max`` over the same array usually reads faster than its (pairwise) ``sum``: that stricter
bound is reported too (``fraction_of_max_bound``), with the load average (the machine may be
shared: two threads only help when two cores are free).
The peer is the bound itself: extra_info["fraction_of_bound"] = tok/s / bound tok/s
(target >= 0.5 for the 400M model).  The models are written as real model.poppins files
(random ternary codes, no training) and loaded the way ``infer`` loads them.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from poppins.engine.modelfile import write_model_file
from poppins.engine.packing import TernaryTensor, packed_row_bytes
from poppins.engine.runtime import Engine
from poppins.model.config import ModelConfig
from poppins.engine.config import param_shapes

#: name -> (dim, layers, heads); 12 * dim^2 ternary parameters per layer
SIZES = {"10M": (256, 12, 4), "100M": (768, 14, 12), "400M": (1024, 32, 16)}
VOCAB = 8192
PROMPT, GEN = 16, 48

_VALID = np.array([a | (b << 2) | (c << 4) | (d << 6) for a in range(3) for b in range(3)
                   for c in range(3) for d in range(3)], dtype=np.uint8)


def _random_ternary(rng, m, k):
    codes = rng.choice(_VALID, size=(m, packed_row_bytes(k)))
    if k % 4:  # padding codes must be 0b00
        keep = (1 << (2 * (k % 4))) - 1
        codes[:, -1] &= keep
    return TernaryTensor(np.ascontiguousarray(codes), (m, k), 0.02)


def build_model(directory: Path, size: str) -> Path:
    dim, layers, heads = SIZES[size]
    cfg = ModelConfig(vocab_size=VOCAB, dim=dim, layers=layers, heads=heads,
                      context_length=PROMPT + GEN + 8)
    rng = np.random.default_rng(7)
    tensors = {}
    for name, shape, kind in param_shapes(cfg):
        if kind == "bitlinear":
            tensors[name] = _random_ternary(rng, *shape)
        elif kind == "embed":
            tensors[name] = rng.integers(-127, 128, shape, dtype=np.int8)
            tensors[name + ".scale"] = np.full(shape[0], 0.02 / 40, np.float32)
        else:
            tensors[name] = np.ones(shape, np.float32)
    path = directory / f"random-{size}.poppins"
    write_model_file(path, config=cfg.to_dict(), tensors=tensors, tokenizer_json="{}",
                     sources={}, default_system=None)
    return path


def read_bandwidth(threads: int, nbytes: int = 512 << 20, how: str = "sum") -> float:
    """Bytes/s of NumPy reducing (``how``: sum or max) a large float32 array (best of 3) on
    ``threads`` threads."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    for _ in range(3):
        if threads == 1:
            t = time.perf_counter()
            getattr(a, how)()
            dt = time.perf_counter() - t
        else:
            ths = [threading.Thread(target=getattr(p, how)) for p in parts]
            t = time.perf_counter()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            dt = time.perf_counter() - t
        best = min(best, dt)
    return a.nbytes / best


def decode_tok_s(engine: Engine, threads: int, rounds: int = 2) -> float:
    best = 0.0
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        s = engine.session(threads=threads)
        lg = s.forward(rng.integers(125, VOCAB, PROMPT))
        tok = int(np.argmax(lg))
        t = time.perf_counter()
        for _ in range(GEN):
            tok = int(np.argmax(s.forward([tok])))
        best = max(best, GEN / (time.perf_counter() - t))
    return best


@pytest.fixture(scope="module")
def model_dir():
    with tempfile.TemporaryDirectory(prefix="poppins-bench-decode-") as d:
        yield Path(d)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", list(SIZES))
def test_decode_vs_bandwidth_bound(benchmark, model_dir, size, threads):
    path = model_dir / f"random-{size}.poppins"
    if not path.exists():
        build_model(model_dir, size)
    engine = Engine.load(path, threads=threads, verify=False)
    bytes_per_token = engine.weight_bytes_per_token() + sum(
        L.attn_norm.nbytes + L.ffn_norm.nbytes for L in engine.layers)
    bw = read_bandwidth(threads)
    bw_max = read_bandwidth(threads, how="max")
    bound = bw / bytes_per_token
    tok_s = benchmark.pedantic(decode_tok_s, args=(engine, threads), rounds=1, iterations=1)
    frac = tok_s / bound
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    benchmark.extra_info.update({
        "read_bandwidth_max_GBs": bw_max / 1e9,
        "fraction_of_max_bound": tok_s / (bw_max / bytes_per_token), "loadavg_1min": load,
        "model": size, "ternary_params": engine.ternary_params(), "threads": threads,
        "bytes_per_token": bytes_per_token, "read_bandwidth_GBs": bw / 1e9,
        "bound_tok_s": bound, "tok_s": tok_s, "fraction_of_bound": frac})
    print(f"\n{size:>5} ({engine.ternary_params() / 1e6:.0f}M ternary, "
          f"{bytes_per_token / 2 ** 20:.1f} MiB/token) threads={threads}: {tok_s:.1f} tok/s; "
          f"bandwidth {bw / 1e9:.1f} GB/s -> bound {bound:.1f} tok/s; "
          f"fraction of bound {frac:.2f} (max-read bound {bw_max / 1e9:.1f} GB/s: "
          f"{tok_s / (bw_max / bytes_per_token):.2f}); load {load:.1f}")

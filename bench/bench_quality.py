"""Training quality against PyTorch: the same model, recipe and data order on both sides.

    python -m pytest bench/bench_quality.py --benchmark-only -s

tinyshakespeare as one byte-level text (our tokenizer with no merges: 125 special ids + 256
bytes = vocabulary 381), first 90% train, last 10% validation (nanoGPT's character split).
Config (a): d=128, 4 layers, 4 heads, context 64, batch 12, untied embeddings; 2000 steps,
warm-up 100 then cosine from 1e-3 to 1e-4, AdamW (0.9, 0.99), weight decay 0.1 on matrices,
gradient clipping at 1.0.  Both sides start from the same weights and see the same batches
(random windows drawn by one seeded generator); validation loss is measured on the same 40
fixed windows.  Run for the ternary model and with the quantizers bypassed.  The target:
our validation loss within 0.03 of PyTorch's.  ``POPPINS_QUALITY_STEPS`` shortens the run.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from poppins.model import AdamW, Model, ModelConfig  # noqa: E402
from poppins.threads import default_threads  # noqa: E402
from poppins.tokenizer import Tokenizer  # noqa: E402
from poppins.training import TrainConfig  # noqa: E402
from poppins.training.schedule import lr_wd_at  # noqa: E402

STEPS = int(os.environ.get("POPPINS_QUALITY_STEPS", "2000"))
B, T = 12, 64
SCHED = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1)
TOLERANCE = 0.03


def _split(text: str):
    ids = Tokenizer.train([], vocab_size=381).encode(text, special=False).astype(np.int64)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:]


def _windows(ids, rng, n):
    ix = rng.integers(0, len(ids) - T - 1, n)
    x = np.stack([ids[i:i + T] for i in ix])
    y = np.stack([ids[i + 1:i + T + 1] for i in ix])
    return x, y


def _ours(cfg, init, train_ids, val_windows, threads):
    model = Model(cfg, threads=threads, init=False)
    for n, a in init.items():
        model.params[n][...] = a
    opt = AdamW(model, lr=SCHED.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    rng = np.random.default_rng(1337)
    for step in range(STEPS):
        lr, wd = lr_wd_at(step, STEPS, SCHED)
        x, y = _windows(train_ids, rng, B)
        model.loss_and_grad(x, y)
        g = model.flat_grads
        norm = math.sqrt(float(np.dot(g.astype(np.float64), g.astype(np.float64))))
        if norm > 1.0:
            g *= 1.0 / norm
        opt.step(lr=lr, weight_decay=wd)
    losses = [model.forward(x, y) for x, y in val_windows]
    return float(np.mean(losses))


def _torch(cfg, init, train_ids, val_windows, threads):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from torch_reference import TorchTernaryLM

    torch.set_num_threads(threads)
    m = TorchTernaryLM.from_numpy(cfg, init)
    norms = [p for n, p in m.params.items() if n.endswith("norm")]
    mats = [p for n, p in m.params.items() if not n.endswith("norm")]
    opt = torch.optim.AdamW([{"params": mats, "weight_decay": 0.1},
                             {"params": norms, "weight_decay": 0.0}],
                            lr=SCHED.lr, betas=(0.9, 0.99), eps=1e-8)
    rng = np.random.default_rng(1337)
    for step in range(STEPS):
        lr, _ = lr_wd_at(step, STEPS, SCHED)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = _windows(train_ids, rng, B)
        loss = m.loss(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(m.params.values()), 1.0)
        opt.step()
    with torch.no_grad():
        losses = [float(m.loss(torch.from_numpy(x), torch.from_numpy(y))) for x, y in val_windows]
    return float(np.mean(losses))


@pytest.mark.parametrize("quantize", [True, False], ids=["ternary", "float"])
def test_quality_against_pytorch(benchmark, tinyshakespeare, quantize):
    train_ids, val_ids = _split(tinyshakespeare)
    cfg = ModelConfig(vocab_size=381, dim=128, layers=4, heads=4, context_length=T,
                      tie_embeddings=False, quantize=quantize)
    init = {n: p.copy() for n, p in Model(cfg, seed=0, threads=1).params.items()}
    vrng = np.random.default_rng(4242)
    val_windows = [_windows(val_ids, vrng, B) for _ in range(40)]
    threads = default_threads()
    result = {}

    def both():
        t = time.perf_counter()
        result["ours"] = _ours(cfg, init, train_ids, val_windows, threads)
        result["ours_s"] = time.perf_counter() - t
        t = time.perf_counter()
        result["torch"] = _torch(cfg, init, train_ids, val_windows, threads)
        result["torch_s"] = time.perf_counter() - t

    benchmark.pedantic(both, rounds=1, iterations=1)
    diff = result["ours"] - result["torch"]
    benchmark.extra_info.update(val_loss_poppins=result["ours"], val_loss_torch=result["torch"],
                                difference=diff, steps=STEPS, seconds_poppins=result["ours_s"],
                                seconds_torch=result["torch_s"])
    print(f"\n[{'ternary' if quantize else 'float'}] {STEPS} steps: val loss poppins "
          f"{result['ours']:.4f} ({result['ours_s']:.0f} s), PyTorch {result['torch']:.4f} "
          f"({result['torch_s']:.0f} s), difference {diff:+.4f} (target |d| <= {TOLERANCE})")
    if STEPS >= 2000:
        assert abs(diff) <= TOLERANCE

"""Training-step throughput of poppins' ternary transformer vs the same model in PyTorch.

    python -m pytest bench/bench_train_step.py --benchmark-only -q -s

One training step = forward, backward and AdamW on a batch of random tokens, BitLinear QAT on
(per-token absmax int8 activations, absmean ternary weights, straight-through estimator),
embeddings and head untied and in float, MHA, squared-ReLU FFN (4*d), RoPE:

    (a) d=128, 4 layers, 4 heads, context 64,  batch 12, vocabulary 381
    (b) d=256, 6 layers, 8 heads, context 256, batch 8,  vocabulary 4096

at 1 and 2 threads.  The peer is tests/torch_reference.py (the oracle of the model tests:
the same architecture and quantizer rules, ``F.scaled_dot_product_attention``,
``torch.optim.AdamW`` with weight decay on the matrices only) at ``torch.set_num_threads(t)``,
float32 CPU, eager.  The two sides alternate step by step in one run (each torch step runs in
the untimed setup of a poppins round), so both see the same machine load; the best step time
of each side gives tokens/s, and ratio = poppins tokens/s / torch tokens/s.  Targets: >= 1.0x
on (a) and (b) at 1 thread, >= 1.2x on (b) at 2 threads.  Skips without torch
(``pip install torch==2.13.0``, the CPU wheel).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from poppins.model import AdamW, Model, ModelConfig  # noqa: E402
from poppins.model import kernels as K  # noqa: E402

CASES = {
    "a": (dict(vocab_size=381, dim=128, layers=4, heads=4, context_length=64), 12, 12),
    "b": (dict(vocab_size=4096, dim=256, layers=6, heads=8, context_length=256), 8, 3),
}
TARGETS = {("a", 1): 1.0, ("b", 1): 1.0, ("b", 2): 1.2}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_train_step_vs_torch(benchmark, case, threads):
    torch = pytest.importorskip("torch")
    from torch_reference import TorchTernaryLM

    sizes, B, rounds = CASES[case]
    cfg = ModelConfig(**sizes, tie_embeddings=False, quantize=True, attention="mha")
    T = cfg.context_length
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (B, T))
    tg = rng.integers(0, cfg.vocab_size, (B, T))

    model = Model(cfg, seed=0, threads=threads)
    opt = AdamW(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

    def ours():
        model.loss_and_grad(tok, tg)
        opt.step()

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    tm = TorchTernaryLM.init(cfg, seed=0)
    decay = [p for p in tm.params.values() if p.ndim > 1]
    no_decay = [p for p in tm.params.values() if p.ndim == 1]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.99))
    ttok, ttg = torch.tensor(tok), torch.tensor(tg)
    torch_times = []

    def peer():
        t0 = time.perf_counter()
        loss = tm.loss(ttok, ttg)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()
        torch_times.append(time.perf_counter() - t0)

    try:
        for _ in range(2):  # warm-up: buffers, thread pools, allocator
            ours()
            peer()
        torch_times.clear()
        benchmark.pedantic(ours, setup=peer, rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(prev_threads)
    t_ours = benchmark.stats.stats.min
    t_torch = min(torch_times)
    tokens = B * T
    ratio = t_torch / t_ours
    target = TARGETS.get((case, threads))
    info = {"case": case, "threads": threads, "tokens_per_step": tokens,
            "poppins_tok_s": tokens / t_ours, "torch_tok_s": tokens / t_torch,
            "poppins_step_s": t_ours, "torch_step_s": t_torch,
            "poppins_median_step_s": benchmark.stats.stats.median,
            "torch_median_step_s": float(np.median(torch_times)),
            "ratio_vs_torch": ratio, "target": target, "torch_version": torch.__version__,
            "kernels": K.backend(), "compiled_gemm": K.compiled_gemm()}
    benchmark.extra_info.update(info)
    print(f"\n[train step ({case}) threads={threads}] poppins {tokens / t_ours:,.0f} tok/s "
          f"({t_ours * 1e3:.1f} ms), torch {tokens / t_torch:,.0f} tok/s "
          f"({t_torch * 1e3:.1f} ms), ratio {ratio:.2f}x"
          + (f" (target {target:.1f}x)" if target else ""))

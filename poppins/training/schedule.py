"""Learning-rate and weight-decay schedules, as pure functions of the step.

* ``cosine``: linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio``.
* ``two-stage`` (BitNet b1.58): warm-up, then a first stage decaying from ``lr`` to
  ``lr / 2`` over the first half; at mid-training the rate drops to ``0.4 * lr`` and decays
  to ``lr * min_lr_ratio``, and weight decay is switched off for the second stage.
"""
from __future__ import annotations

import math
from typing import Tuple


def _cos(frac: float, hi: float, lo: float) -> float:
    frac = min(max(frac, 0.0), 1.0)
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * frac))


def lr_wd_at(step: int, total: int, cfg) -> Tuple[float, float]:
    """(learning rate, weight decay) for 0-based ``step`` of ``total`` steps."""
    lr, wd, floor = cfg.lr, cfg.weight_decay, cfg.lr * cfg.min_lr_ratio
    warm = min(cfg.warmup_steps, max(total - 1, 0))
    if step < warm:
        return lr * (step + 1) / warm, wd
    span = max(total - warm, 1)
    frac = (step - warm) / span
    if cfg.schedule == "cosine":
        return _cos(frac, lr, floor), wd
    if frac < 0.5:
        return _cos(frac * 2, lr, lr * 0.5), wd
    return _cos((frac - 0.5) * 2, lr * 0.4, floor), 0.0

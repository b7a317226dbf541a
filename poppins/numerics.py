"""The one NumPy reference of the numerics shared by training and the engine.

Every other Python user (model/reference.py, engine/ops_ref.py, engine/packing.py,
engine/reference.py, model/model.py, engine/runtime.py) imports these; the C side has its one
copy in ``ext/common/poppins_numerics.h``.  Tests compare every compiled path with these.

Per-row int8 activation quantizer (decisions.md, "Training signal"), THE clamp rule:

    m = max(max|y|, QUANT_EPS)          # QUANT_EPS = 1e-5, in y's dtype
    s = 127 / m                         # in y's dtype
    q = clip(rint(y * s), -128, 127)    # rint rounds half to even

Training dequantizes ``q / s``; the engine keeps the int8 codes ``q`` and the scale ``s``.
The clamp is the training rule (the model was trained with it): a row with
``0 <= max|y| < 1e-5`` gets ``s = 127 / 1e-5`` (its codes are small or zero), so an
all-zero row gives zero codes and ``s = 1.27e7`` -- the same codes and scale in training
and inference, and ``127 / m`` can never overflow.

RMSNorm: ``y = (x * r) * g`` with ``r = 1 / sqrt(mean(x^2) + eps)``, the mean of squares
accumulated in float64, ``r`` rounded to x's dtype.

RoPE: half-split pairs ``(i, i + rot/2)`` of each head's rotary slice,
``a' = a cos - b sin``, ``b' = a sin + b cos``; tables from :func:`rope_tables`.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

#: Lower clamp of max|y| (activations) and mean|W| (weights).
QUANT_EPS = 1e-5


def act_quant_codes(y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes and scales of y (shape [n, d], float32 or float64).

    Returns (q int8 [n, d], s [n] in y's dtype) with the one clamp rule above.
    """
    y = np.asarray(y)
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float32)
    dt = y.dtype
    if y.shape[-1]:
        amax = np.max(np.abs(y), axis=-1)
    else:
        amax = np.zeros(y.shape[:-1], dt)
    m = np.maximum(amax, dt.type(QUANT_EPS)).astype(dt)
    s = (dt.type(127.0) / m).astype(dt)
    q = np.clip(np.rint(y * s[..., None]), -128, 127).astype(np.int8)
    return q, s


def act_quant_dequant(y: np.ndarray) -> np.ndarray:
    """Per-row absmax int8 quantize + dequantize (``q / s``, in y's dtype): the training Qa,
    the same codes and scales as :func:`act_quant_codes` (float32 or float64)."""
    y = np.asarray(y)
    q, s = act_quant_codes(y)
    return (q.astype(s.dtype) / s[..., None]).astype(s.dtype)


def rms_rstd(x: np.ndarray, eps: float) -> np.ndarray:
    """r[i] = 1 / sqrt(mean(x[i]^2) + eps), the mean in float64, r in x's dtype."""
    x = np.asarray(x)
    ms = np.mean(x.astype(np.float64) ** 2, axis=-1)
    return (1.0 / np.sqrt(ms + float(eps))).astype(x.dtype)


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """(y, r): y = (x * r) * g per row, r from :func:`rms_rstd`."""
    x = np.asarray(x)
    r = rms_rstd(x, eps)
    return (x * r[..., None]) * np.asarray(g)[None, :], r


def rope_rotate(x: np.ndarray, c: np.ndarray, s: np.ndarray, nheads: int, head_stride: int,
                offset: int) -> None:
    """Rotate x in place: for every head h < nheads the columns
    [h*head_stride + offset, + 2*half) of row t by the angle whose cos/sin are c[t], s[t]
    (c, s: [n, half]).  Half-split pairs: a' = a c - b s, b' = a s + b c."""
    half = c.shape[1]
    for h in range(nheads):
        c0 = h * head_stride + offset
        a = x[:, c0:c0 + half].copy()
        b = x[:, c0 + half:c0 + 2 * half].copy()
        x[:, c0:c0 + half] = a * c - b * s
        x[:, c0 + half:c0 + 2 * half] = a * s + b * c


def rope_tables(length: int, rot: int, theta: float, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [length, rot/2]: angle t * theta^(-2i/rot) (computed in float64)."""
    inv = theta ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    return (np.ascontiguousarray(np.cos(ang), dtype=dtype),
            np.ascontiguousarray(np.sin(ang), dtype=dtype))

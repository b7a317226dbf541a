"""NumPy references of the engine ops of ``poppins._engine`` (same names, same signatures).

Every op writes into the arrays it is given and takes ``threads`` only to keep the signature
of the compiled op (the references are single-threaded).  All float arrays are float32, rows
C-contiguous.  The quantizer, RMSNorm and RoPE are the one reference of
:mod:`poppins.numerics` (the training rule: per row ``s = 127 / max(max|y|, 1e-5)`` in
float32, ``q = clip(rint(y * s), -128, 127)``, round half to even).

Positions: an op working on ``n`` new tokens gets ``pos0``, the position of the first one;
token ``t`` sits at position ``pos0 + t`` and attends to cache rows ``0 .. pos0 + t``.
"""
from __future__ import annotations

import numpy as np

from ..numerics import act_quant_codes, rmsnorm as _rmsnorm, rope_rotate


def _quant_rows(y: np.ndarray, q: np.ndarray, scales: np.ndarray) -> None:
    qq, s = act_quant_codes(np.asarray(y, dtype=np.float32))
    q[...] = qq
    scales[...] = s


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """x * rstd * g (poppins.numerics.rmsnorm: the mean of squares in float64)."""
    return _rmsnorm(x, g, eps)[0]


def rmsnorm(x, g, eps, out, threads=1):
    """out = x * rstd * g (float32 [n, d])."""
    out[...] = _rms(np.asarray(x), np.asarray(g), eps)


def rmsnorm_quant(x, g, eps, q, scales, threads=1):
    """q, scales = int8 quantization of rmsnorm(x) * g; x [n, d] float32, q int8 [n, d],
    scales float32 [n]."""
    _quant_rows(_rms(np.asarray(x), np.asarray(g), eps), q, scales)


def quant_rows(x, q, scales, threads=1):
    """q, scales = int8 quantization of each row of x."""
    _quant_rows(np.asarray(x), q, scales)


def relu2_quant(u, q, scales, threads=1):
    """q, scales = int8 quantization of max(u, 0)^2 (row-wise)."""
    r = np.maximum(np.asarray(u), np.float32(0))
    _quant_rows(r * r, q, scales)


def dequant(acc, wscale, xscales, out, accumulate, threads=1):
    """out (= or += when accumulate) acc * (wscale / xscales[row]); acc int32 [n, m]."""
    f = (np.float32(wscale) / np.asarray(xscales, dtype=np.float32)).astype(np.float32)
    y = np.asarray(acc).astype(np.float32) * f[:, None]
    if accumulate:
        out += y
    else:
        out[...] = y


def rope(x, cos, sin, pos0, nheads, head_stride, offset, threads=1):
    """Rotate in place, for every head h < nheads, the columns [h*head_stride + offset, +rot)
    of row t of x by the angle of position pos0 + t (rot = 2 * cos.shape[1]; half-split pairs
    (i, i + rot/2): a' = a cos - b sin, b' = a sin + b cos)."""
    n = x.shape[0]
    rope_rotate(x, cos[pos0:pos0 + n], sin[pos0:pos0 + n], nheads, head_stride, offset)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    m = np.max(s, axis=1, keepdims=True)
    p = np.exp(s - m)
    return p / np.sum(p, axis=1, keepdims=True)


def _causal(n: int, pos0: int) -> np.ndarray:
    return np.arange(pos0 + n)[None, :] > (pos0 + np.arange(n))[:, None]


def attention(q, kc, vc, out, pos0, n_heads, n_kv_heads, scale, threads=1):
    """Causal attention of n new queries over the cache (MHA / GQA).

    q [n, H*dk]; kc [>= pos0+n, Hkv*dk] and vc [>= pos0+n, Hkv*dv] hold keys/values of
    positions 0 .. pos0+n-1 (the new ones included); out [n, H*dv].  Head h reads kv head
    h // (H / Hkv).
    """
    n = q.shape[0]
    H, Hk = n_heads, n_kv_heads
    dk = q.shape[1] // H
    dv = vc.shape[1] // Hk
    grp = H // Hk
    P = pos0 + n
    mask = _causal(n, pos0)
    for h in range(H):
        hk = h // grp
        s = (q[:, h * dk:(h + 1) * dk] @ kc[:P, hk * dk:(hk + 1) * dk].T) * np.float32(scale)
        s[mask] = -np.inf
        out[:, h * dv:(h + 1) * dv] = _softmax_rows(s) @ vc[:P, hk * dv:(hk + 1) * dv]


def mla_attention(q, ckv, kr, wkv_b, wscale, out, pos0, n_heads, head_dim, scale, threads=1):
    """MLA attention over the latent cache with the key/value up-projection absorbed.

    q [n, H*(hd + r)] (per head: hd no-rope then r rotary columns, rotated already);
    ckv [>= pos0+n, kvl] the (quantized-dequantized, normalized) latents; kr [>= pos0+n, r]
    the rotated shared keys; wkv_b [2*H*hd, kvl] float32 ternary values (-1, 0, 1) of the
    up-projection, ``wscale`` its absmean scale (rows h*hd.. are head h's key, rows
    H*hd + h*hd.. its value); out [n, H*hd].

    With Wk_h, Wv_h the head's blocks: score_j = (ws * q_nope Wk_h) . c_j + q_rope . kr_j
    (times ``scale``), o_h = ws * Wv_h (sum_j p_j c_j) -- the same numbers as expanding every
    cached latent to keys and values, without doing it.
    """
    n = q.shape[0]
    H, hd = n_heads, head_dim
    r = kr.shape[1]
    w = hd + r
    P = pos0 + n
    C = ckv[:P]
    KR = kr[:P]
    mask = _causal(n, pos0)
    ws = np.float32(wscale)
    for h in range(H):
        qn = q[:, h * w:h * w + hd]
        qr = q[:, h * w + hd:(h + 1) * w]
        u = (qn @ wkv_b[h * hd:(h + 1) * hd]) * ws
        s = (u @ C.T + qr @ KR.T) * np.float32(scale)
        s[mask] = -np.inf
        m = _softmax_rows(s) @ C
        out[:, h * hd:(h + 1) * hd] = (m @ wkv_b[(H + h) * hd:(H + h + 1) * hd].T) * ws


def head_logits(h, table, row_scale, out, threads=1):
    """out [n, V] = h [n, d] @ table^T, table [V, d] float32 / float16 / int8; for int8 each
    row is multiplied by row_scale[v] (its dequantization factor), else row_scale is unused."""
    t = np.asarray(table)
    y = np.asarray(h, dtype=np.float32) @ t.astype(np.float32).T
    if t.dtype == np.int8:
        y = y * np.asarray(row_scale, dtype=np.float32)[None, :]
    out[...] = y


def embed(table, row_scale, tokens, out, threads=1):
    """out[i] = table[tokens[i]] as float32 (int8 rows times row_scale)."""
    t = np.asarray(table)
    ids = np.asarray(tokens, dtype=np.int64)
    rows = t[ids].astype(np.float32)
    if t.dtype == np.int8:
        rows = rows * np.asarray(row_scale, dtype=np.float32)[ids][:, None]
    out[...] = rows

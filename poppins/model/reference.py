"""NumPy references of every fused kernel of ``poppins._ops`` (same names, same signatures).

Each function writes into the output arrays it is given (like the compiled kernels) and takes
``threads`` only to keep the signature identical; the references are single-threaded.  They
work for float32 and float64.  The model calls them through :mod:`poppins.model.kernels`
when the extension is missing (or ``POPPINS_NO_EXT=1``), and the tests compare the compiled
kernels against them.

Quantizer rules (decisions.md, "Training signal"):

* activations, per row (token): ``s = 127 / max|x|`` (``max|x|`` clamped below at 1e-5),
  ``q = clip(rint(x * s), -128, 127)``, dequantized as ``q / s``;
* weights, per tensor: ``scale = mean|W|`` (accumulated in float64, clamped below at 1e-5),
  ``q = clip(rint(W / scale), -1, 1)``, dequantized as ``q * scale``.

``rint`` rounds half to even.  The activation quantizer, RMSNorm and RoPE are the one
reference of :mod:`poppins.numerics` (shared with the engine).
"""
from __future__ import annotations

import numpy as np

from ..numerics import QUANT_EPS, rms_rstd, rope_rotate
from ..numerics import act_quant_dequant as _act_quant_rows


def gemm(a, b, out, trans_a, trans_b, accumulate, threads=1):
    """out (= or += when accumulate) op(a) @ op(b) (op transposes when trans_* is set)."""
    A = a.T if trans_a else a
    Bm = b.T if trans_b else b
    if accumulate:
        out += A @ Bm
    else:
        np.matmul(A, Bm, out=out)


def act_quant(x, out, threads=1):
    """out = absmax-int8 quantize+dequantize of each row of x (shape [n, d])."""
    out[...] = _act_quant_rows(np.asarray(x))


def rmsnorm_quant_fwd(x, g, out, rstd, eps, quant, threads=1):
    """out = [quant](x * rstd * g), rstd[i] = 1 / sqrt(mean(x[i]^2) + eps).

    x: [n, d]; g: [d]; out: [n, d]; rstd: [n].  The mean of squares is accumulated in float64.
    """
    x = np.asarray(x)
    r = rms_rstd(x, eps)
    rstd[...] = r
    y = (x * r[:, None]) * g[None, :]
    out[...] = _act_quant_rows(y) if quant else y


def rmsnorm_bwd(x, g, rstd, dy, dx, dg, accumulate, threads=1):
    """Backward of y = x * rstd * g.

    dx (= or += when accumulate) rstd * (g*dy - xhat * mean(g*dy*xhat)), xhat = x*rstd;
    dg[...] = sum over rows of dy * xhat (always overwritten).
    """
    x = np.asarray(x)
    dt = x.dtype
    xhat = x * rstd[:, None]
    gdy = dy * g[None, :]
    c = np.mean((gdy * xhat).astype(np.float64), axis=1).astype(dt)
    res = rstd[:, None] * (gdy - xhat * c[:, None])
    if accumulate:
        dx += res
    else:
        dx[...] = res
    dg[...] = np.sum((dy * xhat).astype(np.float64), axis=0).astype(dt)


def relu2_quant_fwd(u, out, quant, threads=1):
    """out = [quant](max(u, 0)^2), row-wise quantization.  u, out: [n, d]."""
    r = np.maximum(np.asarray(u), 0)
    y = r * r
    out[...] = _act_quant_rows(y) if quant else y


def relu2_bwd(u, dy, du, threads=1):
    """du = dy * 2 * max(u, 0)."""
    du[...] = dy * (2 * np.maximum(np.asarray(u), 0))


def weight_quant(w, out, threads=1):
    """out = clip(rint(w / scale), -1, 1) * scale with scale = mean|w|; returns scale (float)."""
    w = np.asarray(w)
    dt = w.dtype
    scale = max(float(np.mean(np.abs(w.astype(np.float64)))), QUANT_EPS)
    s = dt.type(scale)
    out[...] = (np.clip(np.rint(w / s), -1, 1) * s).astype(dt)
    return scale


def rope(x, cos, sin, seq_len, nheads, head_stride, offset, inverse, threads=1):
    """Rotate, in place, for every head h < nheads the columns
    [h*head_stride + offset, h*head_stride + offset + rot) of each row of x (rot = 2*cos.shape[1]).

    Row r is position r % seq_len; cos, sin: [>= seq_len, rot/2].  Half-split pairs
    (i, i + rot/2):  a' = a cos - b sin,  b' = a sin + b cos.  ``inverse`` rotates by the
    opposite angle (the backward pass).
    """
    n = x.shape[0]
    pos = np.arange(n) % seq_len
    c = cos[pos]
    s = sin[pos]
    if inverse:
        s = -s
    rope_rotate(x, c, s, nheads, head_stride, offset)


def _allowed(seg_start_row, T):
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    return (j <= i) & (j >= seg_start_row[:, None])


def attn_fwd(q, k, v, o, lse, seg_start, n_heads, n_kv_heads, scale, threads=1):
    """Causal softmax attention within segments.

    q: [B*T, H*dqk], k: [B*T, Hkv*dqk], v: [B*T, Hkv*dv], o: [B*T, H*dv] (row views of larger
    buffers are fine); lse: [B, H, T] (log-sum-exp of the scaled scores, kept for backward);
    seg_start: int32 [B, T], the first position query t may attend to (keys j with
    seg_start[b, t] <= j <= t).  Head h uses kv head h // (H / Hkv).
    """
    B, T = seg_start.shape
    H, Hk = n_heads, n_kv_heads
    dqk = q.shape[1] // H
    dv = v.shape[1] // Hk
    grp = H // Hk
    for b in range(B):
        rows = slice(b * T, (b + 1) * T)
        allowed = _allowed(seg_start[b], T)
        for h in range(H):
            hk = h // grp
            qh = q[rows, h * dqk:(h + 1) * dqk]
            kh = k[rows, hk * dqk:(hk + 1) * dqk]
            vh = v[rows, hk * dv:(hk + 1) * dv]
            s = (qh @ kh.T) * scale
            s = np.where(allowed, s, -np.inf)
            m = np.max(s, axis=1, keepdims=True)
            p = np.exp(s - m)
            z = np.sum(p, axis=1, keepdims=True)
            o[rows, h * dv:(h + 1) * dv] = (p / z) @ vh
            lse[b, h, :] = (m + np.log(z))[:, 0]


def attn_bwd(q, k, v, o, lse, do, dq, dk, dv_, seg_start, n_heads, n_kv_heads, scale,
             threads=1):
    """Backward of :func:`attn_fwd`; dq, dk, dv_ are overwritten (same layouts as q, k, v)."""
    B, T = seg_start.shape
    H, Hk = n_heads, n_kv_heads
    dqk = q.shape[1] // H
    dv = v.shape[1] // Hk
    grp = H // Hk
    dk[...] = 0
    dv_[...] = 0
    for b in range(B):
        rows = slice(b * T, (b + 1) * T)
        allowed = _allowed(seg_start[b], T)
        for h in range(H):
            hk = h // grp
            qh = q[rows, h * dqk:(h + 1) * dqk]
            kh = k[rows, hk * dqk:(hk + 1) * dqk]
            vh = v[rows, hk * dv:(hk + 1) * dv]
            oh = o[rows, h * dv:(h + 1) * dv]
            doh = do[rows, h * dv:(h + 1) * dv]
            s = (qh @ kh.T) * scale
            p = np.where(allowed, np.exp(s - lse[b, h, :, None]), 0)
            dv_[rows, hk * dv:(hk + 1) * dv] += p.T @ doh
            dp = doh @ vh.T
            D = np.sum(doh * oh, axis=1, keepdims=True)
            ds = p * (dp - D) * scale
            dq[rows, h * dqk:(h + 1) * dqk] = ds @ kh
            dk[rows, hk * dqk:(hk + 1) * dqk] += ds.T @ qh


def cross_entropy(logits, targets, coef, dlogits, losses, threads=1):
    """Fused softmax cross-entropy, forward and backward.

    logits: [n, V]; targets: int32 [n] (a negative target is ignored: loss 0, gradient 0);
    coef: [n] per-row weight of the loss (mask * weight / sum(mask)).
    losses[i] = logsumexp(logits[i]) - logits[i, targets[i]];
    dlogits[i] = coef[i] * (softmax(logits[i]) - onehot(targets[i])) (dlogits may be logits);
    returns sum_i coef[i] * losses[i] (a Python float, accumulated in float64).
    """
    x = np.asarray(logits)
    dt = x.dtype
    n = x.shape[0]
    t = np.asarray(targets).astype(np.int64)
    valid = t >= 0
    tt = np.where(valid, t, 0)
    m = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - m)
    z = np.sum(e.astype(np.float64), axis=1, keepdims=True)
    lse = m[:, 0].astype(np.float64) + np.log(z[:, 0])
    ce = np.where(valid, lse - x[np.arange(n), tt].astype(np.float64), 0.0)
    losses[...] = ce.astype(dt)
    c = np.where(valid, np.asarray(coef, dtype=np.float64), 0.0)
    p = (e / z.astype(dt)).astype(dt)
    p[np.arange(n), tt] -= valid.astype(dt)
    dlogits[...] = p * c[:, None].astype(dt)
    return float(np.sum(c * ce))


def adamw(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, threads=1):
    """One AdamW step (PyTorch's formula), in place on flat arrays p, m, v.

    p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps).
    """
    dt = p.dtype
    bc1 = 1.0 - beta1 ** step
    bc2s = np.sqrt(1.0 - beta2 ** step)
    p *= dt.type(1.0 - lr * weight_decay)
    m *= dt.type(beta1)
    m += dt.type(1.0 - beta1) * g
    v *= dt.type(beta2)
    v += dt.type(1.0 - beta2) * (g * g)
    denom = np.sqrt(v) / dt.type(bc2s) + dt.type(eps)
    p -= dt.type(lr / bc1) * (m / denom)


def embed_fwd(table, tokens, out, threads=1):
    """out[i] = table[tokens[i]]."""
    out[...] = table[np.asarray(tokens)]


def embed_bwd(dtable, tokens, dx, threads=1):
    """dtable[tokens[i]] += dx[i] (accumulates)."""
    np.add.at(dtable, np.asarray(tokens), dx)

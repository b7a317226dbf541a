"""The training side of the attention units: buffers, forward, hand-written backward.

Each class extends the attention type of :mod:`poppins.engine.attention` (which holds what
training and the engine share: derived sizes, config rules, parameter names and shapes) with

- :meth:`buffers`: its activations and gradient scratch on the model's per-shape ``_Buffers``;
- :meth:`forward`: block ``i``'s attention, ``bf.h1[i]`` (quantized normalized input) ->
  ``bf.o[i]`` (heads' output, before ``wo``), keeping what backward needs;
- :meth:`backward`: ``bf.do`` (gradient of ``bf.o[i]``) -> the gradients of its parameters
  and ``bf.dh`` (gradient of ``bf.h1[i]``).

The model (:mod:`poppins.model.model`) calls only these; it has no branch on the type.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..engine import attention as EA
from . import kernels as K


class TrainingAttention(EA.Attention):
    """The training interface (see the module docstring)."""

    def buffers(self, bf, cfg, N: int, L: int, z) -> None:
        raise NotImplementedError

    def forward(self, m, i: int, bf) -> None:
        raise NotImplementedError

    def backward(self, m, i: int, bf) -> None:
        raise NotImplementedError


class MHA(EA.MHA, TrainingAttention):
    """MHA/GQA: one fused BitLinear ``wqkv`` (one weight tensor, one absmean scale)."""

    def buffers(self, bf, cfg, N, L, z):
        C = (cfg.heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        bf.qkv = [z(N, C) for _ in range(L)]
        bf.dqkv = z(N, C)

    def forward(self, m, i, bf):
        cfg, nt = m.cfg, m.threads
        W = m.wq
        p = f"layers.{i}."
        H, hd, T, Hk = cfg.heads, cfg.head_dim, bf.T, cfg.n_kv_heads
        qkv = bf.qkv[i]
        K.gemm(bf.h1[i], W[p + "attn.wqkv"], qkv, False, True, threads=nt)
        K.rope(qkv, m.cos, m.sin, T, H + Hk, hd, 0, False, nt)
        K.attn_fwd(qkv[:, :H * hd], qkv[:, H * hd:(H + Hk) * hd], qkv[:, (H + Hk) * hd:],
                   bf.o[i], bf.lse[i], bf.seg_start, H, Hk, self.softmax_scale(cfg), nt)

    def backward(self, m, i, bf):
        cfg, nt = m.cfg, m.threads
        W, G = m.wq, m.grads
        p = f"layers.{i}."
        H, hd, Hk = cfg.heads, cfg.head_dim, cfg.n_kv_heads
        qkv, dqkv = bf.qkv[i], bf.dqkv
        a, b_ = H * hd, (H + Hk) * hd
        K.attn_bwd(qkv[:, :a], qkv[:, a:b_], qkv[:, b_:], bf.o[i], bf.lse[i], bf.do,
                   dqkv[:, :a], dqkv[:, a:b_], dqkv[:, b_:], bf.seg_start, H, Hk,
                   self.softmax_scale(cfg), nt)
        K.rope(dqkv, m.cos, m.sin, bf.T, H + Hk, hd, 0, True, nt)
        K.gemm(dqkv, bf.h1[i], G[p + "attn.wqkv"], True, False, threads=nt)
        K.gemm(dqkv, W[p + "attn.wqkv"], bf.dh, False, False, threads=nt)


class MLA(EA.MLA, TrainingAttention):
    """MLA (DeepSeek-V2), see :class:`poppins.engine.attention.MLA`; the full per-head keys
    (no-rope part from ``wkv_b``, rotary part shared) are built for the attention kernel."""

    def buffers(self, bf, cfg, N, L, z):
        H, hd, r, kvl = cfg.heads, cfg.head_dim, cfg.rope_width, cfg.kv_latent
        bf.qf = [z(N, H * (hd + r)) for _ in range(L)]
        bf.kva = [z(N, kvl + r) for _ in range(L)]
        bf.ckv = [z(N, kvl) for _ in range(L)]
        bf.rstdkv = [z(N) for _ in range(L)]
        bf.kvb = [z(N, 2 * H * hd) for _ in range(L)]
        bf.kfull = [z(N, H * (hd + r)) for _ in range(L)]
        if cfg.q_latent_dim:
            ql = cfg.q_latent_dim
            bf.cq = [z(N, ql) for _ in range(L)]
            bf.cqq = [z(N, ql) for _ in range(L)]
            bf.rstdq = [z(N) for _ in range(L)]
            bf.dcq = z(N, ql)
            bf.dcqx = z(N, ql)
        bf.dqf = z(N, H * (hd + r))
        bf.dkfull = z(N, H * (hd + r))
        bf.dkvb = z(N, 2 * H * hd)
        bf.dkva = z(N, kvl + r)
        bf.dckv = z(N, kvl)

    def forward(self, m, i, bf):
        cfg, nt, q = m.cfg, m.threads, m.cfg.quantize
        P, W = m.params, m.wq
        p = f"layers.{i}."
        H, hd, T, r, kvl = cfg.heads, cfg.head_dim, bf.T, cfg.rope_width, cfg.kv_latent
        N = bf.N
        qf, kva, kvb, kfull = bf.qf[i], bf.kva[i], bf.kvb[i], bf.kfull[i]
        if cfg.q_latent_dim:
            K.gemm(bf.h1[i], W[p + "attn.wq_a"], bf.cq[i], False, True, threads=nt)
            K.rmsnorm_quant_fwd(bf.cq[i], P[p + "attn.q_norm"], bf.cqq[i], bf.rstdq[i],
                                cfg.norm_eps, q, nt)
            K.gemm(bf.cqq[i], W[p + "attn.wq_b"], qf, False, True, threads=nt)
        else:
            K.gemm(bf.h1[i], W[p + "attn.wq"], qf, False, True, threads=nt)
        K.gemm(bf.h1[i], W[p + "attn.wkv_a"], kva, False, True, threads=nt)
        K.rmsnorm_quant_fwd(kva[:, :kvl], P[p + "attn.kv_norm"], bf.ckv[i], bf.rstdkv[i],
                            cfg.norm_eps, q, nt)
        K.gemm(bf.ckv[i], W[p + "attn.wkv_b"], kvb, False, True, threads=nt)
        K.rope(qf, m.cos, m.sin, T, H, hd + r, hd, False, nt)
        K.rope(kva, m.cos, m.sin, T, 1, kvl + r, kvl, False, nt)
        k3 = kfull.reshape(N, H, hd + r)
        k3[:, :, :hd] = kvb[:, :H * hd].reshape(N, H, hd)
        k3[:, :, hd:] = kva[:, None, kvl:]
        K.attn_fwd(qf, kfull, kvb[:, H * hd:], bf.o[i], bf.lse[i], bf.seg_start, H, H,
                   self.softmax_scale(cfg), nt)

    def backward(self, m, i, bf):
        cfg, nt = m.cfg, m.threads
        P, W, G = m.params, m.wq, m.grads
        p = f"layers.{i}."
        H, hd, r, kvl, N, T = cfg.heads, cfg.head_dim, cfg.rope_width, cfg.kv_latent, bf.N, bf.T
        kvb, kva = bf.kvb[i], bf.kva[i]
        dkvb, dkva, dqf, dkf = bf.dkvb, bf.dkva, bf.dqf, bf.dkfull
        K.attn_bwd(bf.qf[i], bf.kfull[i], kvb[:, H * hd:], bf.o[i], bf.lse[i], bf.do,
                   dqf, dkf, dkvb[:, H * hd:], bf.seg_start, H, H, self.softmax_scale(cfg), nt)
        dk3 = dkf.reshape(N, H, hd + r)
        dkvb[:, :H * hd].reshape(N, H, hd)[...] = dk3[:, :, :hd]
        np.sum(dk3[:, :, hd:], axis=1, out=dkva[:, kvl:])
        K.rope(dkva, m.cos, m.sin, T, 1, kvl + r, kvl, True, nt)
        K.rope(dqf, m.cos, m.sin, T, H, hd + r, hd, True, nt)
        K.gemm(dkvb, bf.ckv[i], G[p + "attn.wkv_b"], True, False, threads=nt)
        K.gemm(dkvb, W[p + "attn.wkv_b"], bf.dckv, False, False, threads=nt)
        # kva[:, :kvl] is the pre-norm latent (rope only touched the last r columns)
        K.rmsnorm_bwd(kva[:, :kvl], P[p + "attn.kv_norm"], bf.rstdkv[i], bf.dckv,
                      dkva[:, :kvl], G[p + "attn.kv_norm"], False, nt)
        K.gemm(dkva, bf.h1[i], G[p + "attn.wkv_a"], True, False, threads=nt)
        K.gemm(dkva, W[p + "attn.wkv_a"], bf.dh, False, False, threads=nt)
        if cfg.q_latent_dim:
            K.gemm(dqf, bf.cqq[i], G[p + "attn.wq_b"], True, False, threads=nt)
            K.gemm(dqf, W[p + "attn.wq_b"], bf.dcq, False, False, threads=nt)
            K.rmsnorm_bwd(bf.cq[i], P[p + "attn.q_norm"], bf.rstdq[i], bf.dcq, bf.dcqx,
                          G[p + "attn.q_norm"], False, nt)
            K.gemm(bf.dcqx, bf.h1[i], G[p + "attn.wq_a"], True, False, threads=nt)
            K.gemm(bf.dcqx, W[p + "attn.wq_a"], bf.dh, False, False, True, nt)
        else:
            K.gemm(dqf, bf.h1[i], G[p + "attn.wq"], True, False, threads=nt)
            K.gemm(dqf, W[p + "attn.wq"], bf.dh, False, False, True, nt)


#: the training units by ModelConfig.attention name (the same keys as
#: poppins.engine.attention.ATTENTION)
TRAINING_ATTENTION: Dict[str, TrainingAttention] = {u.name: u for u in (MHA(), MLA())}
assert set(TRAINING_ATTENTION) == set(EA.ATTENTION)


def training_unit(cfg) -> TrainingAttention:
    return TRAINING_ATTENTION[cfg.attention]

"""The ternary transformer: forward, hand-written backward, BitNet b1.58 QAT.

Architecture (decoder-only, pre-norm, no biases)::

    x = E[tokens]
    for each block:
        x = x + Attn(RMSNorm(x))        # MHA/GQA or MLA, rotary positions, causal within segments
        x = x + W_down(relu(W_up(RMSNorm(x)))^2)
    logits = RMSNorm(x) @ H^T           # H = E when tie_embeddings (default)

Attention is a unit (:mod:`poppins.model.attention`: params, buffers, forward, backward of
MHA/GQA and MLA); this module never branches on the attention type.
Every projection inside Attn and the feed-forward is a BitLinear layer: latent float weights
W; the forward pass computes ``Qa(x) @ Qw(W)^T`` with the per-token absmax int8 activation
quantizer Qa and the per-tensor absmean ternary weight quantizer Qw of decisions.md
(see :mod:`poppins.model.reference`); the backward pass is the straight-through estimator
(``dx = dy @ Qw(W)``, ``dW = dy^T @ Qa(x)``).  MHA/GQA use one fused BitLinear for the query,
key and value projections (``wqkv``: one weight tensor, one absmean scale).  MLA follows
DeepSeek-V2: ``wkv_a`` maps x to a latent (``kv_latent_dim``) plus a decoupled rotary key
(``rope_dim``, shared by all heads); the latent goes through RMSNorm (``kv_norm``) and
``wkv_b`` to per-head no-rope keys and values; queries come from ``wq`` (or ``wq_a`` ->
``q_norm`` -> ``wq_b`` when ``q_latent_dim`` is set) with a no-rope and a rotary part per head.
RoPE rotates half-split pairs (i, i + rot/2).  With ``quantize=False`` Qa and Qw are the
identity: the same code is a float model.

Loss (decisions.md): ``sum(mask * weight * CE) / sum(mask)``.

All parameters live in one flat array (``flat_params``; decayed matrices first, then the
norm gains) with named views in ``params``; gradients likewise (``flat_grads``, ``grads``).
Activation buffers are allocated once per (batch, length) shape and reused.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np

from ..engine.config import ModelConfig, param_shapes
from ..errors import PoppinsError
from ..numerics import rope_tables
from ..threads import resolve_threads
from . import kernels as K
from .attention import training_unit


def segment_starts(segments: Optional[np.ndarray], B: int, T: int) -> np.ndarray:
    """seg_start[b, t]: the first position of the run of equal segment ids containing t.

    Position t attends to keys j with seg_start[b, t] <= j <= t, so samples packed into one
    context window never see each other.  ``segments`` None means one segment per row.
    """
    if segments is None:
        return np.zeros((B, T), dtype=np.int32)
    seg = np.asarray(segments)
    if seg.shape != (B, T):
        raise PoppinsError(f"segments must have the shape of tokens {(B, T)}, got {seg.shape}")
    boundary = np.ones((B, T), dtype=bool)
    boundary[:, 1:] = seg[:, 1:] != seg[:, :-1]
    idx = np.where(boundary, np.arange(T, dtype=np.int32)[None, :], 0).astype(np.int32)
    return np.ascontiguousarray(np.maximum.accumulate(idx, axis=1), dtype=np.int32)


class _Buffers:
    """Activations and scratch for one (B, T) shape, allocated once."""

    def __init__(self, m: "Model", B: int, T: int):
        cfg, dt = m.cfg, m.dtype
        N, d, H, hd, F = B * T, cfg.dim, cfg.heads, cfg.head_dim, cfg.hidden_dim
        z = lambda *s: np.zeros(s, dtype=dt)  # noqa: E731
        self.B, self.T, self.N = B, T, N
        L = cfg.layers
        self.x = [z(N, d) for _ in range(L + 1)]      # residual stream entering block l
        self.xm = [z(N, d) for _ in range(L)]         # after attention
        self.rstd1 = [z(N) for _ in range(L)]
        self.rstd2 = [z(N) for _ in range(L)]
        self.h1 = [z(N, d) for _ in range(L)]         # Qa(RMSNorm(x)) -> attention projections
        self.h2 = [z(N, d) for _ in range(L)]         # Qa(RMSNorm(xm)) -> w_up
        self.o = [z(N, H * hd) for _ in range(L)]     # attention output
        self.oq = [z(N, H * hd) for _ in range(L)] if cfg.quantize else self.o
        self.lse = [z(B, H, T) for _ in range(L)]
        self.u = [z(N, F) for _ in range(L)]          # w_up output
        self.a = [z(N, F) for _ in range(L)]          # Qa(relu(u)^2)
        m.attn.buffers(self, cfg, N, L, z)
        self.hf = z(N, d)
        self.rstdf = z(N)
        self.tmp = z(N, d)
        self.dx = z(N, d)
        self.dh = z(N, d)
        self.do = z(N, H * hd)
        self.du = z(N, F)
        self.da = z(N, F)
        self.logits = None      # [N, V], allocated on first loss computation
        self.losses = z(N)
        self.coef = z(N)
        self.tokens = np.zeros(N, dtype=np.int32)
        self.targets = np.zeros(N, dtype=np.int32)
        self.seg_start = np.zeros((B, T), dtype=np.int32)


class Model:
    """The ternary transformer with a hand-written backward pass.

    ``Model(cfg, seed=0, threads=None)`` initializes the weights (normal, std 0.02; the
    output projections ``wo`` and ``w_down`` scaled by 1/sqrt(2*layers); norm gains 1).

    Training step (what the trainer calls)::

        loss = model.forward(tokens, targets, mask=mask, weights=weights, segments=segments)
        model.backward()                  # fills model.flat_grads / model.grads
        opt.step()                        # poppins.model.AdamW(model, ...)

    ``loss_and_grad(...)`` does both.  ``last_logits(tokens)`` gives the logits of the last
    position of each row (the test oracle's greedy decoding:
    :func:`poppins.training.generate.greedy`).
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0, threads: Optional[int] = None,
                 init: bool = True):
        self.cfg = cfg.validate()
        self.dtype = np.dtype(cfg.dtype)
        self.threads = resolve_threads(threads)
        #: the attention unit (poppins.model.attention): its params' buffers, forward, backward
        self.attn = training_unit(cfg)
        self.layout = param_shapes(cfg)
        total = sum(int(np.prod(s)) for _, s, _ in self.layout)
        self.flat_params = np.zeros(total, dtype=self.dtype)
        self.flat_grads = np.zeros(total, dtype=self.dtype)
        self.params: Dict[str, np.ndarray] = OrderedDict()
        self.grads: Dict[str, np.ndarray] = OrderedDict()
        self.slices: Dict[str, slice] = {}
        off = 0
        n_decay = 0
        for name, shape, kind in self.layout:
            n = int(np.prod(shape))
            self.params[name] = self.flat_params[off:off + n].reshape(shape)
            self.grads[name] = self.flat_grads[off:off + n].reshape(shape)
            self.slices[name] = slice(off, off + n)
            if kind != "norm":
                n_decay = off + n
            off += n
        #: flat index ranges: matrices (weight decay applies) and norm gains (no decay)
        self.decay_slices = (slice(0, n_decay), slice(n_decay, total))
        self.bitlinear = [n for n, _, k in self.layout if k == "bitlinear"]
        # dequantized ternary weights, one buffer; views per BitLinear weight
        nq = sum(self.params[n].size for n in self.bitlinear) if cfg.quantize else 0
        self._wq_flat = np.zeros(nq, dtype=self.dtype)
        self.wq: Dict[str, np.ndarray] = {}
        self.wscale: Dict[str, float] = {}
        off = 0
        for n in self.bitlinear:
            if cfg.quantize:
                p = self.params[n]
                self.wq[n] = self._wq_flat[off:off + p.size].reshape(p.shape)
                off += p.size
            else:
                self.wq[n] = self.params[n]
        self.cos, self.sin = rope_tables(cfg.context_length, cfg.rope_width, cfg.rope_theta,
                                         self.dtype)
        self._bufs: "OrderedDict[Tuple[int, int], _Buffers]" = OrderedDict()
        self._cache = None  # what backward() needs from the last forward()
        if init:
            self.init_weights(seed)

    # ----------------------------------------------------------------- parameters
    def init_weights(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        std = 0.02
        for name, shape, kind in self.layout:
            p = self.params[name]
            if kind == "norm":
                p[...] = 1.0
            else:
                s = std
                if name.endswith(("attn.wo", "ffn.w_down")):
                    s = std / np.sqrt(2 * self.cfg.layers)
                p[...] = rng.standard_normal(shape) * s

    def num_params(self) -> int:
        return int(self.flat_params.size)

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {n: p.copy() for n, p in self.params.items()}

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        missing = [n for n in self.params if n not in state]
        extra = [n for n in state if n not in self.params]
        if missing or extra:
            raise PoppinsError(f"state dict does not match the model config "
                               f"(missing: {missing[:5]}, unexpected: {extra[:5]})")
        for n, p in self.params.items():
            a = np.asarray(state[n])
            if a.shape != p.shape:
                raise PoppinsError(f"state dict: {n} has shape {a.shape}, expected {p.shape}")
            p[...] = a

    def quantize_weights(self) -> None:
        """Refresh the dequantized ternary weights from the latent weights."""
        if not self.cfg.quantize:
            return
        for n in self.bitlinear:
            self.wscale[n] = K.weight_quant(self.params[n], self.wq[n], self.threads)

    # ----------------------------------------------------------------- buffers
    def _buffers(self, B: int, T: int) -> _Buffers:
        key = (B, T)
        b = self._bufs.get(key)
        if b is None:
            b = _Buffers(self, B, T)
            self._bufs[key] = b
            while len(self._bufs) > 3:
                self._bufs.popitem(last=False)
        else:
            self._bufs.move_to_end(key)
        return b

    def release_buffers(self) -> None:
        self._bufs.clear()
        self._cache = None

    # ----------------------------------------------------------------- forward
    def _check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer):
            raise PoppinsError(f"tokens must be a [batch, length] integer array, got {t.shape} "
                               f"{t.dtype}")
        B, T = t.shape
        if T < 1 or T > self.cfg.context_length:
            raise PoppinsError(f"sequence length {T} is outside 1..context_length "
                               f"({self.cfg.context_length})")
        if t.size and (t.min() < 0 or t.max() >= self.cfg.vocab_size):
            raise PoppinsError(f"token id out of range 0..{self.cfg.vocab_size - 1}")
        return t

    def _trunk(self, tokens: np.ndarray, segments) -> _Buffers:
        """Embedding and blocks; leaves the final residual stream in bufs.x[L]."""
        cfg, nt = self.cfg, self.threads
        B, T = tokens.shape
        bf = self._buffers(B, T)
        bf.tokens[...] = tokens.reshape(-1)
        bf.seg_start[...] = segment_starts(segments, B, T)
        self.quantize_weights()
        K.embed_fwd(self.params["tok_emb"], bf.tokens, bf.x[0], nt)
        for i in range(cfg.layers):
            self._block_fwd(i, bf)
        return bf

    def _block_fwd(self, i: int, bf: _Buffers) -> None:
        cfg, nt, q = self.cfg, self.threads, self.cfg.quantize
        P, W = self.params, self.wq
        p = f"layers.{i}."
        x, xm = bf.x[i], bf.xm[i]
        K.rmsnorm_quant_fwd(x, P[p + "attn_norm"], bf.h1[i], bf.rstd1[i], cfg.norm_eps, q, nt)
        self.attn.forward(self, i, bf)
        if q:
            K.act_quant(bf.o[i], bf.oq[i], nt)
        K.gemm(bf.oq[i], W[p + "attn.wo"], bf.tmp, False, True, threads=self.threads)
        np.add(x, bf.tmp, out=xm)
        K.rmsnorm_quant_fwd(xm, P[p + "ffn_norm"], bf.h2[i], bf.rstd2[i], cfg.norm_eps, q, nt)
        K.gemm(bf.h2[i], W[p + "ffn.w_up"], bf.u[i], False, True, threads=self.threads)
        K.relu2_quant_fwd(bf.u[i], bf.a[i], q, nt)
        K.gemm(bf.a[i], W[p + "ffn.w_down"], bf.tmp, False, True, threads=self.threads)
        np.add(xm, bf.tmp, out=bf.x[i + 1])

    def _head_matrix(self) -> np.ndarray:
        return self.params["tok_emb"] if self.cfg.tie_embeddings else self.params["head"]

    def forward(self, tokens, targets, mask=None, weights=None, segments=None) -> float:
        """Loss = sum(mask * weights * CE) / sum(mask) over all positions; keeps what
        :meth:`backward` needs.

        tokens, targets: int [B, T] (targets are the next tokens; a negative target is
        ignored); mask: 0/1 [B, T] (default all ones); weights: float [B, T] (default ones);
        segments: int [B, T] segment ids of packed samples (attention stays within a run of
        equal ids; default one segment per row).  Returns the loss (a Python float).
        """
        tokens = self._check_tokens(tokens)
        B, T = tokens.shape
        tg = np.asarray(targets)
        if tg.shape != (B, T):
            raise PoppinsError(f"targets must have the shape of tokens {(B, T)}, got {tg.shape}")
        if tg.size and tg.max() >= self.cfg.vocab_size:
            raise PoppinsError(f"target id out of range 0..{self.cfg.vocab_size - 1}")
        with K.blas_context(self.threads):
            bf = self._trunk(tokens, segments)
            bf.targets[...] = tg.reshape(-1)
            mk = np.ones((B, T)) if mask is None else np.asarray(mask, dtype=np.float64)
            if mk.shape != (B, T):
                raise PoppinsError(f"mask must have the shape of tokens {(B, T)}")
            wt = np.ones((B, T)) if weights is None else np.asarray(weights, dtype=np.float64)
            if wt.shape != (B, T):
                raise PoppinsError(f"weights must have the shape of tokens {(B, T)}")
            den = float(mk.sum())
            bf.coef[...] = (mk * wt / den).reshape(-1) if den > 0 else 0.0
            nt = self.threads
            K.rmsnorm_quant_fwd(bf.x[-1], self.params["final_norm"], bf.hf, bf.rstdf,
                                self.cfg.norm_eps, False, nt)
            if bf.logits is None:
                bf.logits = np.zeros((bf.N, self.cfg.vocab_size), dtype=self.dtype)
            K.gemm(bf.hf, self._head_matrix(), bf.logits, False, True, threads=self.threads)
            loss = K.cross_entropy(bf.logits, bf.targets, bf.coef, bf.logits, bf.losses, nt)
        self._cache = bf
        return loss

    def per_token_loss(self) -> np.ndarray:
        """Cross-entropy of every position of the last forward(), shape [B, T] (a copy)."""
        bf = self._cache
        if bf is None:
            raise RuntimeError("per_token_loss() needs a forward() first")
        return bf.losses.reshape(bf.B, bf.T).copy()

    def last_logits(self, tokens, segments=None) -> np.ndarray:
        """Logits of the last position of each row, shape [B, vocab] (no loss, no backward)."""
        tokens = self._check_tokens(tokens)
        B, T = tokens.shape
        with K.blas_context(self.threads):
            bf = self._trunk(tokens, segments)
            last = np.ascontiguousarray(bf.x[-1].reshape(B, T, -1)[:, -1, :])
            hf = np.empty_like(last)
            rs = np.empty(B, dtype=self.dtype)
            K.rmsnorm_quant_fwd(last, self.params["final_norm"], hf, rs, self.cfg.norm_eps,
                                False, self.threads)
            out = hf @ self._head_matrix().T
        self._cache = None
        return out

    # ----------------------------------------------------------------- backward
    def backward(self, accumulate: bool = False) -> None:
        """Gradients of the last forward()'s loss into flat_grads (overwritten, or added to
        when ``accumulate``)."""
        bf = self._cache
        if bf is None:
            raise RuntimeError("backward() needs a forward() with targets first")
        prev = self.flat_grads.copy() if accumulate else None
        with K.blas_context(self.threads):
            self._backward(bf)
        if prev is not None:
            self.flat_grads += prev
        self._cache = None

    def _backward(self, bf: _Buffers) -> None:
        cfg, nt = self.cfg, self.threads
        G = self.grads
        dl = bf.logits  # already holds dlogits (cross_entropy wrote them in place)
        if cfg.tie_embeddings:
            K.gemm(dl, bf.hf, G["tok_emb"], True, False, threads=self.threads)
        else:
            K.gemm(dl, bf.hf, G["head"], True, False, threads=self.threads)
            G["tok_emb"][...] = 0
        K.gemm(dl, self._head_matrix(), bf.dh, False, False, threads=self.threads)
        K.rmsnorm_bwd(bf.x[-1], self.params["final_norm"], bf.rstdf, bf.dh, bf.dx,
                      G["final_norm"], False, nt)
        for i in reversed(range(cfg.layers)):
            self._block_bwd(i, bf)
        K.embed_bwd(G["tok_emb"], bf.tokens, bf.dx, nt)

    def _block_bwd(self, i: int, bf: _Buffers) -> None:
        nt = self.threads
        P, W, G = self.params, self.wq, self.grads
        p = f"layers.{i}."
        dx = bf.dx  # gradient w.r.t. the block output x[i+1]
        # feed-forward: x[i+1] = xm + a @ Wd^T
        K.gemm(dx, bf.a[i], G[p + "ffn.w_down"], True, False, threads=self.threads)
        K.gemm(dx, W[p + "ffn.w_down"], bf.da, False, False, threads=self.threads)
        K.relu2_bwd(bf.u[i], bf.da, bf.du, nt)
        K.gemm(bf.du, bf.h2[i], G[p + "ffn.w_up"], True, False, threads=self.threads)
        K.gemm(bf.du, W[p + "ffn.w_up"], bf.dh, False, False, threads=self.threads)
        K.rmsnorm_bwd(bf.xm[i], P[p + "ffn_norm"], bf.rstd2[i], bf.dh, dx, G[p + "ffn_norm"],
                      True, nt)
        # attention: xm = x + oq @ Wo^T
        K.gemm(dx, bf.oq[i], G[p + "attn.wo"], True, False, threads=self.threads)
        K.gemm(dx, W[p + "attn.wo"], bf.do, False, False, threads=self.threads)
        self.attn.backward(self, i, bf)
        K.rmsnorm_bwd(bf.x[i], P[p + "attn_norm"], bf.rstd1[i], bf.dh, dx, G[p + "attn_norm"],
                      True, nt)

    def loss_and_grad(self, tokens, targets, mask=None, weights=None, segments=None) -> float:
        loss = self.forward(tokens, targets, mask=mask, weights=weights, segments=segments)
        self.backward()
        return loss

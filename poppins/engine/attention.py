"""Attention as a unit: one class per attention type, the only place that knows the type.

An attention type answers, for a :class:`~poppins.engine.config.ModelConfig` ``cfg``:

- config (shared by training and the engine): :meth:`~Attention.n_kv_heads`,
  :meth:`~Attention.rope_width`, its extra config rules (:meth:`~Attention.check`) and the
  names and shapes of its parameters in one layer (:meth:`~Attention.params`; these are also
  the tensor names of the model file);
- engine: which packed weights a layer holds (:meth:`~Attention.load`), the KV-cache layout
  of a session (:meth:`~Attention.new_cache`: two arrays per layer, handed in that order to the
  compiled decode step), its scratch buffers (:meth:`~Attention.scratch`) and the Python step
  for n tokens (:meth:`~Attention.step`: normalized, quantized input -> ``s.o``);
- in C: its ``eng_attention`` enum value (ext/engine/engine_step.h), mapped from ``name``
  in one place (``_ATTENTION`` in ext/engine/_engine.pyx), and its unit in engine_step.c.

The training side (params' buffers, forward, backward) subclasses these in
:mod:`poppins.model.attention`.  To add an attention type: a subclass here (config + engine),
one in poppins/model/attention.py (training), a registry entry in both, and its case in the
compiled decode step.

Implementations: :class:`MHA` (multi-head attention; grouped-query when ``kv_heads`` <
``heads``) and :class:`MLA` (DeepSeek-V2 multi-head latent attention).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig

#: (name, shape, kind) rows of one layer's parameters; kind 'bitlinear' or 'norm'
Params = List[Tuple[str, Tuple[int, ...], str]]


class Attention:
    """The interface; see the module docstring."""

    name = ""
    #: the engine layer's attributes this type sets in :meth:`load` (the compiled decode
    #: step reads every type's attributes; the ones of other types stay None)
    layer_slots: Tuple[str, ...] = ()

    # ---------------------------------------------------------------- config
    def n_kv_heads(self, cfg: "ModelConfig") -> int:
        raise NotImplementedError

    def rope_width(self, cfg: "ModelConfig") -> int:
        raise NotImplementedError

    def check(self, cfg: "ModelConfig") -> List[str]:
        """Config problems of this type (the common fields are valid and dim % heads == 0)."""
        raise NotImplementedError

    def params(self, cfg: "ModelConfig", prefix: str) -> Tuple[Params, Params]:
        """(matrices, norm gains) of one layer's attention before ``attn.wo``, in file order;
        ``prefix`` is ``layers.{i}.``."""
        raise NotImplementedError

    def softmax_scale(self, cfg: "ModelConfig") -> float:
        raise NotImplementedError

    # ---------------------------------------------------------------- engine
    def load(self, cfg: "ModelConfig", layer, prefix: str, tern, dense) -> None:
        """Set this type's weights on the engine layer (``tern(name)``: packed ternary,
        ``dense(name)``: float32 array)."""
        raise NotImplementedError

    def ternary_weights(self, layer) -> List[Tuple[int, int]]:
        """(bytes read per decode step, ternary parameters) of each ternary weight of this
        type in the engine layer."""
        raise NotImplementedError

    #: the names of the two per-layer KV-cache arrays (the compiled step gets them in order)
    cache_names: Tuple[str, str] = ("", "")

    def cache_widths(self, cfg: "ModelConfig") -> Tuple[int, int]:
        """float32 values per position of the two cache arrays of one layer."""
        raise NotImplementedError

    def new_cache(self, cfg: "ModelConfig", ctx: int) -> Dict[str, List[np.ndarray]]:
        """The KV cache of a session of ``ctx`` positions: two named lists of per-layer
        float32 arrays (the compiled step gets them in this order)."""
        return {name: [np.zeros((ctx, w), np.float32) for _ in range(cfg.layers)]
                for name, w in zip(self.cache_names, self.cache_widths(cfg))}

    def scratch(self, s, cfg: "ModelConfig", n: int) -> int:
        """Allocate this type's activations for ``n`` tokens on ``s``; returns the widest
        ternary product it needs (columns of the int32 accumulator)."""
        raise NotImplementedError

    def step(self, sess, i: int, layer, s, q8: np.ndarray, pos0: int, n: int) -> None:
        """Layer ``i`` for ``n`` tokens at positions ``pos0..``: ``q8``/``s.qs`` the quantized
        normalized input; caches the keys/values and writes the heads' output into ``s.o``."""
        raise NotImplementedError


class MHA(Attention):
    """Multi-head attention with rotary keys; grouped-query when kv_heads < heads.  One
    fused BitLinear ``wqkv``; the cache holds the rotated keys and the values per kv head."""

    name = "mha"
    layer_slots = ("wqkv",)

    def n_kv_heads(self, cfg):
        return cfg.kv_heads if cfg.kv_heads is not None else cfg.heads

    def rope_width(self, cfg):
        return cfg.head_dim

    def check(self, cfg):
        errs = []
        if cfg.head_dim % 2:
            errs.append(f"model config: head_dim = dim / heads = {cfg.head_dim} must "
                        "be even (rotary embeddings rotate pairs)")
        if cfg.kv_heads is not None and cfg.heads % cfg.kv_heads:
            errs.append(f"model config: heads ({cfg.heads}) must be a multiple of "
                        f"kv_heads ({cfg.kv_heads})")
        return errs

    def params(self, cfg, prefix):
        H, hd, Hk, d = cfg.heads, cfg.head_dim, cfg.n_kv_heads, cfg.dim
        return [(prefix + "attn.wqkv", ((H + 2 * Hk) * hd, d), "bitlinear")], []

    def softmax_scale(self, cfg):
        return 1.0 / math.sqrt(cfg.head_dim)

    def load(self, cfg, layer, prefix, tern, dense):
        layer.wqkv = tern(prefix + "attn.wqkv")

    def ternary_weights(self, layer):
        return [(layer.wqkv.data.nbytes, layer.wqkv.m * layer.wqkv.k)]

    cache_names = ("k", "v")

    def cache_widths(self, cfg):
        w = cfg.n_kv_heads * cfg.head_dim
        return w, w

    def scratch(self, s, cfg, n):
        s.qkv = np.empty((n, (cfg.heads + 2 * cfg.n_kv_heads) * cfg.head_dim), np.float32)
        return s.qkv.shape[1]

    def step(self, sess, i, layer, s, q8, pos0, n):
        e, cfg = sess.engine, sess.engine.cfg
        op, th = e.op, sess.threads
        H, Hk, hd = cfg.heads, cfg.n_kv_heads, cfg.head_dim
        qkv = s.qkv
        sess._linear(layer.wqkv, q8, s.qs, s, qkv)
        op["rope"](qkv, e.cos, e.sin, pos0, H + Hk, hd, 0, th)
        sess.k[i][pos0:pos0 + n] = qkv[:, H * hd:(H + Hk) * hd]
        sess.v[i][pos0:pos0 + n] = qkv[:, (H + Hk) * hd:]
        op["attention"](qkv[:, :H * hd], sess.k[i], sess.v[i], s.o, pos0, H, Hk,
                        self.softmax_scale(cfg), th)


class MLA(Attention):
    """Multi-head latent attention (DeepSeek-V2): ``wkv_a`` maps x to a latent
    (``kv_latent_dim``) plus a decoupled rotary key (``rope_dim``, shared by all heads); the
    latent goes through RMSNorm (``kv_norm``) and ``wkv_b`` to per-head no-rope keys and
    values; queries come from ``wq`` (or ``wq_a`` -> ``q_norm`` -> ``wq_b`` when
    ``q_latent_dim`` is set).  The engine caches the normalized (quantized-dequantized) latent
    and the rotated shared key, and attends with the key/value up-projection absorbed (see
    ops_ref.mla_attention)."""

    name = "mla"
    layer_slots = ("wq", "wq_a", "wq_b", "q_norm", "wkv_a", "kv_norm", "wkv_b", "wkv_b_vals")

    def n_kv_heads(self, cfg):
        return cfg.heads

    def rope_width(self, cfg):
        return cfg.rope_dim if cfg.rope_dim is not None else max(2, (cfg.head_dim // 4) * 2)

    def check(self, cfg):
        errs = []
        if cfg.kv_heads is not None and cfg.kv_heads != cfg.heads:
            errs.append("model config: kv_heads does not apply to attention 'mla' "
                        "(leave it unset)")
        if cfg.rope_width % 2:
            errs.append(f"model config: rope_dim ({cfg.rope_width}) must be even")
        return errs

    def params(self, cfg, prefix):
        p, d, H, hd = prefix, cfg.dim, cfg.heads, cfg.head_dim
        r, kvl = cfg.rope_width, cfg.kv_latent
        mats, norms = [], []
        if cfg.q_latent_dim:
            mats.append((p + "attn.wq_a", (cfg.q_latent_dim, d), "bitlinear"))
            mats.append((p + "attn.wq_b", (H * (hd + r), cfg.q_latent_dim), "bitlinear"))
            norms.append((p + "attn.q_norm", (cfg.q_latent_dim,), "norm"))
        else:
            mats.append((p + "attn.wq", (H * (hd + r), d), "bitlinear"))
        mats.append((p + "attn.wkv_a", (kvl + r, d), "bitlinear"))
        mats.append((p + "attn.wkv_b", (2 * H * hd, kvl), "bitlinear"))
        norms.append((p + "attn.kv_norm", (kvl,), "norm"))
        return mats, norms

    def softmax_scale(self, cfg):
        return 1.0 / math.sqrt(cfg.head_dim + cfg.rope_width)

    def load(self, cfg, layer, prefix, tern, dense):
        p = prefix
        if cfg.q_latent_dim:
            layer.wq_a = tern(p + "attn.wq_a")
            layer.wq_b = tern(p + "attn.wq_b")
            layer.q_norm = dense(p + "attn.q_norm")
        else:
            layer.wq = tern(p + "attn.wq")
        layer.wkv_a = tern(p + "attn.wkv_a")
        layer.kv_norm = dense(p + "attn.kv_norm")
        t = tern(p + "attn.wkv_b", packed=False)
        layer.wkv_b = t
        layer.wkv_b_vals = np.ascontiguousarray(t.values(), dtype=np.float32)

    def ternary_weights(self, layer):
        out = [(w.data.nbytes, w.m * w.k) for w in (layer.wq, layer.wq_a, layer.wq_b,
                                                   layer.wkv_a) if w is not None]
        # wkv_b is absorbed into the attention as float32 values
        out.append((layer.wkv_b_vals.nbytes, layer.wkv_b.shape[0] * layer.wkv_b.shape[1]))
        return out

    cache_names = ("ckv", "kr")

    def cache_widths(self, cfg):
        return cfg.kv_latent, cfg.rope_width

    def scratch(self, s, cfg, n):
        H, hd, r, kvl = cfg.heads, cfg.head_dim, cfg.rope_width, cfg.kv_latent
        s.qf = np.empty((n, H * (hd + r)), np.float32)
        s.kva = np.empty((n, kvl + r), np.float32)
        s.ckv = np.empty((n, kvl), np.float32)
        if cfg.q_latent_dim:
            s.cq = np.empty((n, cfg.q_latent_dim), np.float32)
        return max(s.qf.shape[1], kvl + r, cfg.q_latent_dim or 0)

    def step(self, sess, i, layer, s, q8, pos0, n):
        e, cfg = sess.engine, sess.engine.cfg
        op, th = e.op, sess.threads
        L = layer
        H, hd, r, kvl, eps = cfg.heads, cfg.head_dim, cfg.rope_width, cfg.kv_latent, cfg.norm_eps
        xs = s.qs.copy()
        if cfg.q_latent_dim:
            sess._linear(L.wq_a, q8, xs, s, s.cq)
            c8 = np.empty((n, cfg.q_latent_dim), np.int8)
            cs = np.empty(n, np.float32)
            op["rmsnorm_quant"](s.cq, L.q_norm, eps, c8, cs, th)
            sess._linear(L.wq_b, c8, cs, s, s.qf)
        else:
            sess._linear(L.wq, q8, xs, s, s.qf)
        sess._linear(L.wkv_a, q8, xs, s, s.kva)
        # the latent: RMSNorm, int8 quantize, dequantize (what training feeds into wkv_b)
        l8 = np.empty((n, kvl), np.int8)
        ls = np.empty(n, np.float32)
        op["rmsnorm_quant"](s.kva[:, :kvl], L.kv_norm, eps, l8, ls, th)
        sess.ckv[i][pos0:pos0 + n] = l8.astype(np.float32) / ls[:, None]
        op["rope"](s.qf, e.cos, e.sin, pos0, H, hd + r, hd, th)
        op["rope"](s.kva, e.cos, e.sin, pos0, 1, kvl + r, kvl, th)
        sess.kr[i][pos0:pos0 + n] = s.kva[:, kvl:]
        op["mla_attention"](s.qf, sess.ckv[i], sess.kr[i], L.wkv_b_vals, L.wkv_b.scale, s.o,
                            pos0, H, hd, self.softmax_scale(cfg), th)


#: every attention type by its ModelConfig.attention name
ATTENTION: Dict[str, Attention] = {u.name: u for u in (MHA(), MLA())}


def attention_unit(cfg: "ModelConfig") -> Attention:
    """The attention unit of ``cfg`` (its ``attention`` must be a key of ATTENTION)."""
    return ATTENTION[cfg.attention]

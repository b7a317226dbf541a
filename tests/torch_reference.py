"""A PyTorch version of poppins' ternary transformer (the oracle of tests/test_model_torch.py
and the peer of bench/bench_train_step.py).

Written independently of poppins.model with torch autograd: the same architecture (pre-norm
RMSNorm, half-split RoPE, fused qkv BitLinear for MHA/GQA, DeepSeek-V2 style MLA with a
decoupled rotary key, squared-ReLU FFN, no biases), the same quantizer rules (decisions.md:
per-token absmax int8 activations, per-tensor absmean ternary weights, round half to even)
with the straight-through estimator written the usual way, ``x + (Q(x) - x).detach()``,
``F.scaled_dot_product_attention`` for attention and ``F.cross_entropy`` for the loss.
Parameters are kept in a dict keyed by poppins' parameter names.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

QUANT_EPS = 1e-5


def act_quant(x: torch.Tensor) -> torch.Tensor:
    m = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=QUANT_EPS)
    s = 127.0 / m
    q = torch.clamp(torch.round(x.detach() * s), -128, 127) / s
    return x + (q - x).detach()


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    scale = w.detach().abs().double().mean().clamp(min=QUANT_EPS).to(w.dtype)
    q = torch.clamp(torch.round(w.detach() / scale), -1, 1) * scale
    return w + (q - w).detach()


def rmsnorm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * g


def rope(x, cos, sin):
    """x [..., T, nh, rot]; cos/sin [T, rot/2]: half-split rotation."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c = cos[:, None, :]
    s = sin[:, None, :]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def rope_tables(T, rot, theta, dtype):
    inv = theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


class TorchTernaryLM:
    """Functional model: ``params`` name -> leaf tensor (requires_grad)."""

    def __init__(self, cfg, params: dict, quantize: bool | None = None):
        #: optional {(layer, site): quantized activation} fed instead of this side's own
        #: rounding (sites: h1, cq, ckv, o, h2, a); mismatches are counted in ``flips``.
        self.act_override = None
        self.flips = 0
        self.quantized = 0
        self.cfg = cfg
        self.params = params
        self.quantize = cfg.quantize if quantize is None else quantize
        dt = next(iter(params.values())).dtype
        self.cos, self.sin = rope_tables(cfg.context_length, cfg.rope_width, cfg.rope_theta, dt)

    @classmethod
    def from_numpy(cls, cfg, arrays: dict, dtype=torch.float32, quantize=None):
        params = {n: torch.tensor(a, dtype=dtype, requires_grad=True) for n, a in arrays.items()}
        return cls(cfg, params, quantize)

    @classmethod
    def init(cls, cfg, seed=0, dtype=torch.float32):
        """GPT-2-style init with the poppins parameter layout (for the benchmark)."""
        from poppins.model import param_shapes

        g = torch.Generator().manual_seed(seed)
        params = {}
        for name, shape, kind in param_shapes(cfg):
            if kind == "norm":
                t = torch.ones(shape, dtype=dtype)
            else:
                std = 0.02 / (math.sqrt(2 * cfg.layers) if name.endswith(("wo", "w_down"))
                              else 1.0)
                t = torch.randn(shape, generator=g, dtype=dtype) * std
            params[name] = t.requires_grad_(True)
        return cls(cfg, params)

    def aq(self, x, key):
        if not self.quantize:
            return x
        y = act_quant(x)
        if self.act_override is not None:
            q = self.act_override[key].to(x.dtype).view_as(x)
            step = x.detach().abs().amax(dim=-1, keepdim=True) / 127.0
            # a flip: the two roundings differ by a whole step (not by float noise)
            self.flips += int(((q - y.detach()).abs() > 0.5 * step).sum())
            self.quantized += q.numel()
            y = x + (q - x).detach()
        return y

    def lin(self, x, name, key):
        w = self.params[name]
        if self.quantize:
            return F.linear(self.aq(x, key), weight_quant(w))
        return F.linear(x, w)

    def attention(self, i, h, mask):
        cfg, P = self.cfg, self.params
        p = f"layers.{i}."
        B, T, _ = h.shape
        H, hd = cfg.heads, cfg.head_dim
        cos, sin = self.cos[:T], self.sin[:T]
        if cfg.attention == "mha":
            Hk = cfg.n_kv_heads
            qkv = self.lin(h, p + "attn.wqkv", (i, "h1"))
            q = qkv[..., :H * hd].view(B, T, H, hd)
            k = qkv[..., H * hd:(H + Hk) * hd].view(B, T, Hk, hd)
            v = qkv[..., (H + Hk) * hd:].view(B, T, Hk, hd)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if Hk != H:
                k = k.repeat_interleave(H // Hk, dim=1)
                v = v.repeat_interleave(H // Hk, dim=1)
        else:
            r, kvl = cfg.rope_width, cfg.kv_latent
            if cfg.q_latent_dim:
                cq = self.lin(h, p + "attn.wq_a", (i, "h1"))
                cq = rmsnorm(cq, P[p + "attn.q_norm"], cfg.norm_eps)
                qf = self.lin(cq, p + "attn.wq_b", (i, "cq"))
            else:
                qf = self.lin(h, p + "attn.wq", (i, "h1"))
            qf = qf.view(B, T, H, hd + r)
            q = torch.cat([qf[..., :hd], rope(qf[..., hd:], cos, sin)], dim=-1)
            kva = self.lin(h, p + "attn.wkv_a", (i, "h1"))
            ckv = rmsnorm(kva[..., :kvl], P[p + "attn.kv_norm"], cfg.norm_eps)
            kr = rope(kva[..., kvl:].view(B, T, 1, r), cos, sin)
            kvb = self.lin(ckv, p + "attn.wkv_b", (i, "ckv"))
            kn = kvb[..., :H * hd].view(B, T, H, hd)
            v = kvb[..., H * hd:].view(B, T, H, hd)
            k = torch.cat([kn, kr.expand(B, T, H, r)], dim=-1)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        o = o.transpose(1, 2).reshape(B, T, H * hd)
        return self.lin(o, p + "attn.wo", (i, "o"))

    def hidden(self, tokens, segments=None):
        cfg, P = self.cfg, self.params
        B, T = tokens.shape
        mask = None
        if segments is not None:
            seg = segments
            same = seg[:, :, None] == seg[:, None, :]
            # contiguous runs: a key must not be separated from the query by another segment
            run = torch.cumsum(torch.cat([torch.zeros(B, 1, dtype=torch.long),
                                          (seg[:, 1:] != seg[:, :-1]).long()], 1), 1)
            same = run[:, :, None] == run[:, None, :]
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            mask = same & causal
        x = F.embedding(tokens, P["tok_emb"])
        for i in range(cfg.layers):
            p = f"layers.{i}."
            x = x + self.attention(i, rmsnorm(x, P[p + "attn_norm"], cfg.norm_eps), mask)
            h = rmsnorm(x, P[p + "ffn_norm"], cfg.norm_eps)
            u = self.lin(h, p + "ffn.w_up", (i, "h2"))
            x = x + self.lin(torch.relu(u) ** 2, p + "ffn.w_down", (i, "a"))
        return rmsnorm(x, P["final_norm"], cfg.norm_eps)

    def loss(self, tokens, targets, mask=None, weights=None, segments=None):
        """sum(mask * weights * CE) / sum(mask)."""
        cfg, P = self.cfg, self.params
        hf = self.hidden(tokens, segments)
        head = P["tok_emb"] if cfg.tie_embeddings else P["head"]
        logits = F.linear(hf, head)
        tg = targets.clone()
        tg[tg < 0] = -100
        ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tg.reshape(-1),
                             reduction="none").view_as(targets)
        mk = torch.ones_like(ce) if mask is None else mask.to(ce.dtype)
        wt = torch.ones_like(ce) if weights is None else weights.to(ce.dtype)
        return (mk * wt * ce).sum() / mk.sum()

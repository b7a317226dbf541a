"""Choosing the next token: llama.cpp's samplers, in llama.cpp's order.

    s = Sampler(SamplingParams(temperature=0.8, top_k=40, seed=1))
    token = s.sample(logits, recent_ids)

Order (as llama.cpp's default chain): repeat penalty, top-k, top-p, min-p, temperature, then
a draw from the softmax.  ``temperature <= 0`` is greedy (argmax after the repeat penalty).

- repeat penalty (``repeat_penalty``, over the last ``repeat_last_n`` tokens of the context,
  each distinct id once): a positive logit is divided by the penalty, a non-positive one
  multiplied; 1.0 turns it off.
- top-k: keep the k largest logits (``top_k <= 0``: all).  Ties are broken by the smaller id.
- top-p: keep the smallest prefix (largest first) whose softmax probability sums to at least
  ``top_p`` (>= 1: off).
- min-p: keep the tokens whose probability is at least ``min_p`` times the largest one
  (<= 0: off).  At least one token always survives.
- temperature: divide the logits by it, softmax, draw with the seeded generator.

``seed`` < 0 draws a random seed (reported by :attr:`Sampler.seed`); the same seed, logits
and history give the same tokens.  The generator is splitmix64 (uniform = (next >> 11) *
2^-53), shared with the compiled sampler of ``poppins._engine`` (ext/engine/engine_sample.c),
which follows this module step by step (this module is its reference): the same seed gives
the same tokens on both paths.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import numpy as np

from ..errors import PoppinsError


_I32 = (1 << 31) - 1


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings (defaults: llama.cpp's, decisions.md "Inference")."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1

    def validate(self) -> "SamplingParams":
        errs = []
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                errs.append(f"{name} must be a number, got {v!r}")
        for name, lo, hi in (("top_k", 0, _I32), ("repeat_last_n", -1, _I32),
                             ("seed", -1, (1 << 64) - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                errs.append(f"{name} must be an integer, got {v!r}")
            elif not lo <= v <= hi:
                errs.append(f"{name} must be between {lo} and {hi}, got {v}")
        if not errs:
            if self.temperature < 0:
                errs.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
            if self.repeat_penalty <= 0:
                errs.append(f"repeat penalty must be > 0 (1.0 is off), got {self.repeat_penalty}")
            if not 0 <= self.top_p <= 1:
                errs.append(f"top-p must be in [0, 1], got {self.top_p}")
            if not 0 <= self.min_p <= 1:
                errs.append(f"min-p must be in [0, 1], got {self.min_p}")
        if errs:
            raise PoppinsError("; ".join(errs))
        return self

    @classmethod
    def from_kwargs(cls, **kw) -> "SamplingParams":
        """SamplingParams from keyword arguments; also accepts ``temp`` for temperature."""
        if "temp" in kw:
            kw["temperature"] = kw.pop("temp")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - known)
        if bad:
            raise PoppinsError(f"unknown sampling option(s): {', '.join(bad)} "
                               f"(known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in kw.items() if v is not None}).validate()

    def replace(self, **kw) -> "SamplingParams":
        return replace(self, **kw)


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> None:
    """In place: logits of the ids in ``recent`` divided (positive) / multiplied by penalty."""
    if penalty == 1.0 or len(recent) == 0:
        return
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < logits.shape[0])]
    v = logits[ids]
    logits[ids] = np.where(v <= 0, v * penalty, v / penalty)


def candidates(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """The ids that survive top-k, top-p and min-p, largest logit first (ties: smaller id)."""
    V = logits.shape[0]
    k = p.top_k if 0 < p.top_k < V else V
    if k < V:
        idx = np.argpartition(-logits, k - 1)[:k]
        # argpartition may cut ties arbitrarily: take every id tied with the k-th value,
        # then keep the k best by (logit desc, id asc)
        kth = np.min(logits[idx])
        idx = np.flatnonzero(logits >= kth)
    else:
        idx = np.arange(V)
    order = np.lexsort((idx, -logits[idx]))
    idx = idx[order][:k]
    vals = logits[idx]
    n = idx.shape[0]
    if p.top_p < 1.0 and n > 1:
        e = np.exp(vals - vals[0])
        c = np.cumsum(e)
        c = c / c[-1]
        n = min(n, int(np.searchsorted(c, p.top_p, side="left")) + 1)
    if p.min_p > 0.0 and n > 1:
        thresh = vals[0] + math.log(p.min_p)
        n = max(1, int(np.count_nonzero(vals[:n] >= thresh)))
    return idx[:n]


_M64 = (1 << 64) - 1


def splitmix64(state: int):
    """(next state, 64-bit output) of the splitmix64 generator."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


class Sampler:
    """Seeded sampling state for one generation (``state``: the splitmix64 state)."""

    def __init__(self, params: Optional[SamplingParams] = None):
        self.params = (params or SamplingParams()).validate()
        seed = int(self.params.seed)
        if seed < 0:
            seed = secrets.randbits(32)
        self.seed = seed
        self.state = seed & _M64

    def uniform(self) -> float:
        self.state, z = splitmix64(self.state)
        return (z >> 11) * (1.0 / 9007199254740992.0)

    def sample(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        """The next token (compiled sampler when built, else the reference: same tokens)."""
        fn = _compiled_sample()
        rec = np.ascontiguousarray(np.asarray(recent, dtype=np.int32).reshape(-1))
        lg = np.ascontiguousarray(logits, dtype=np.float32)
        if fn is not None:
            tok, self.state = fn(lg, self.params, self.state, rec)
        else:
            tok, self.state = sample_reference(lg, self.params, self.state, rec)
        return int(tok)


def _compiled_sample():
    from .. import native

    mod = native.load("engine")
    return getattr(mod, "sample", None) if mod is not None else None


def sample_reference(logits: np.ndarray, params: SamplingParams, state: int,
                     recent: np.ndarray):
    """(token, new generator state) -- the reference of poppins._engine.sample."""
    p = params
    lg = np.array(logits, dtype=np.float64)
    if p.repeat_penalty != 1.0 and p.repeat_last_n != 0:
        last = recent if p.repeat_last_n < 0 else recent[-p.repeat_last_n:]
        apply_repeat_penalty(lg, last, p.repeat_penalty)
    if p.temperature <= 0:
        return int(np.argmax(lg)), state
    idx = candidates(lg, p)
    if idx.shape[0] == 1:
        return int(idx[0]), state
    z = lg[idx] / p.temperature
    w = np.exp(z - z[0])
    c = np.cumsum(w)
    state, r = splitmix64(state)
    u = (r >> 11) * (1.0 / 9007199254740992.0) * c[-1]
    j = min(int(np.searchsorted(c, u, side="right")), idx.shape[0] - 1)
    return int(idx[j]), state


def token_logprobs(logits: np.ndarray, token: int, top: int = 0):
    """(logprob of ``token``, [(id, logprob), ...] of the ``top`` likeliest ids) under the
    softmax of the raw ``logits`` (before any sampler: OpenAI's ``logprobs`` /
    ``top_logprobs`` and llama-server's default).  The top list is largest first, ties by the
    smaller id."""
    lg = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = float(np.max(lg))
    lse = m + math.log(float(np.sum(np.exp(lg - m))))
    chosen = float(lg[int(token)] - lse)
    if top <= 0:
        return chosen, []
    k = min(int(top), lg.shape[0])
    idx = np.argpartition(-lg, k - 1)[:k]
    kth = np.min(lg[idx])
    idx = np.flatnonzero(lg >= kth)
    idx = idx[np.lexsort((idx, -lg[idx]))][:k]
    return chosen, [(int(i), float(lg[i] - lse)) for i in idx]

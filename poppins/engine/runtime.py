"""The generation engine: a loaded model file, KV-cached forward passes, the token loop.

    eng = Engine.load("OUT/model.poppins")      # memory-mapped; ternary codes repacked once
    s = eng.session()                           # a KV cache (one conversation / one thread)
    logits = s.forward(prompt_ids)              # prefill: matrix-matrix ternary kernel
    logits = s.forward([next_id])               # decode: matrix-vector ternary kernel

Numerics are those of the training forward pass (poppins.model.Model) with the same
quantizers: per-token absmax int8 activations, per-tensor absmean ternary weights; a BitLinear
layer is the exact int32 sum of ternary x int8 products times ``w_scale / x_scale``.  The
cache is float32; its layout, the attention weights and the attention step are the attention
unit's (:mod:`poppins.engine.attention`: MHA/GQA cache rotated keys and values per kv head,
MLA the normalized latent and the rotated shared key).

A float model (trained with ``--float``: ``quantize=False``, no quantizers) has no ternary
weights for the kernels; it runs through the training forward pass itself (no KV cache: every
step recomputes the sequence), so it answers exactly as training's greedy oracle does.  The
engine imports nothing from training: :class:`poppins.api.Model` attaches that forward
(``Engine.attach_float_forward``).  It is slow, and meant for experiments.

An Engine is read-only after loading: any number of sessions (threads) may use it at once.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import PoppinsError
from ..numerics import rope_tables
from ..threads import PARALLEL_MIN_MACS, resolve_threads, team_policy
from . import kernels as TK
from . import ops
from .attention import ATTENTION, attention_unit
from .config import ModelConfig
from .modelfile import ModelFile, check_model_config, load_model_file

#: products with fewer multiply-adds than this run the ternary kernel on one thread
PARALLEL_MIN_WORK = PARALLEL_MIN_MACS

MODEL_FILE = "model.poppins"


def resolve_model_path(path) -> Path:
    """A model directory (holding model.poppins) or the file itself."""
    p = Path(path)
    if p.is_dir():
        f = p / MODEL_FILE
        if not f.exists():
            hint = ""
            if (p / "checkpoints").is_dir():
                hint = (" (it has checkpoints: export them with "
                        "`python -c \"import poppins.training.export as e; e.export_from_out_dir('"
                        f"{p}')\"` or train again)")
            raise PoppinsError(f"no {MODEL_FILE} in {p}{hint}")
        return f
    if not p.exists():
        raise PoppinsError(f"{p}: no such model file or directory")
    return p


class _Layer:
    """One block's weights: the common ones and every attention unit's ``layer_slots`` (the
    compiled decode step reads them all; the ones of other attention types stay None)."""
    __slots__ = ("attn_norm", "ffn_norm", "wo", "w_up", "w_down") + tuple(
        dict.fromkeys(n for u in ATTENTION.values() for n in u.layer_slots))

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, None)


def aligned_empty(shape, dtype=np.uint8, align: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an ``align``-byte boundary
    (whole-cache-line SIMD loads of packed weights never straddle two lines)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(n + align, np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n].view(dt).reshape(shape)


def pack_aligned(t, threads: int) -> "TK.PackedTernary":
    """PackedTernary.from_tensor into a 64-byte aligned buffer."""
    from . import reference as TR

    m, k = t.shape
    if not 0 <= k <= TK.K_MAX:
        raise PoppinsError(f"ternary tensor with k={k} columns is out of range")
    data = aligned_empty((m, TR.row_bytes(k)))
    invalid = TK._backend().repack(np.ascontiguousarray(t.codes), k, data, threads)
    if invalid:
        raise PoppinsError(f"{invalid} invalid 2-bit codes (0b11) in a ternary tensor")
    return TK.PackedTernary(data, m, k, t.scale)


def _f32(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


class Engine:
    """A model file loaded for generation (weights shared by every session)."""

    def __init__(self, mf: ModelFile, threads: Optional[int] = None,
                 use_reference: bool = False):
        self.file = mf
        self.path = mf.path
        self.cfg = check_model_config(mf)
        cfg = self.cfg
        #: the attention unit: this model's attention weights, KV-cache layout and step
        self.attn = attention_unit(cfg)
        self.threads = resolve_threads(threads)
        self.use_reference = use_reference
        self.op = ops.table(use_reference)
        self.tern = TK.reference if use_reference else TK._backend()
        self.kernel = -1 if use_reference else TK.resolve_kernel(None)
        self.sources: Dict[str, dict] = dict(mf.sources or {})
        self.default_system: Optional[str] = mf.default_system
        self.extra = dict(mf.extra)
        self._tokenizer = None
        #: the team size the last finished session arrived at (Session.keep_team_choice); new
        #: sessions start from it instead of learning the machine again
        self.team_choice: Optional[tuple] = None

        def need(name):
            if name not in mf:
                raise PoppinsError(f"corrupted model file: tensor {name!r} is missing",
                                   file=str(mf.path))
            return mf[name]

        def tern(name, packed=True):
            t = need(name)
            if not hasattr(t, "codes"):
                raise PoppinsError(f"tensor {name!r} is not ternary", file=str(mf.path))
            return pack_aligned(t, self.threads) if packed else t

        def dense(name):
            return _f32(need(name))

        self.emb = np.asarray(need("tok_emb"))
        if self.emb.shape != (cfg.vocab_size, cfg.dim):
            raise PoppinsError(f"tok_emb has shape {self.emb.shape}, the config says "
                               f"{(cfg.vocab_size, cfg.dim)}", file=str(mf.path))
        self.emb_scale = _f32(mf["tok_emb.scale"]) if "tok_emb.scale" in mf else \
            np.ones(cfg.vocab_size, np.float32)
        if cfg.tie_embeddings:
            self.head, self.head_scale = self.emb, self.emb_scale
        else:
            self.head = np.asarray(need("head"))
            self.head_scale = _f32(mf["head.scale"]) if "head.scale" in mf else \
                np.ones(cfg.vocab_size, np.float32)
        self.head_dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16",
                           np.dtype(np.int8): "int8"}.get(self.head.dtype, str(self.head.dtype))
        self.final_norm = _f32(need("final_norm"))
        self.layers: List[_Layer] = []
        #: a float model's forward (the training model with the file's weights), else None
        self.float_model = None
        self.plan = None
        self._float_lock = threading.Lock()   # the float forward's buffers are shared
        if not cfg.quantize:
            self.cos, self.sin = rope_tables(cfg.context_length, cfg.rope_width,
                                             cfg.rope_theta, np.float32)
            return
        for i in range(cfg.layers):
            p = f"layers.{i}."
            L = _Layer()
            L.attn_norm = _f32(need(p + "attn_norm"))
            L.ffn_norm = _f32(need(p + "ffn_norm"))
            self.attn.load(cfg, L, p, tern, dense)
            L.wo = tern(p + "attn.wo")
            L.w_up = tern(p + "ffn.w_up")
            L.w_down = tern(p + "ffn.w_down")
            self.layers.append(L)
        self.cos, self.sin = rope_tables(cfg.context_length, cfg.rope_width, cfg.rope_theta,
                                         np.float32)
        #: the compiled decode step's view of the weights (None: Python per-token path)
        if not use_reference and ops.is_compiled() and hasattr(ops._mod(), "DecodePlan"):
            self.plan = ops._mod().DecodePlan(self, self.kernel)

    def attach_float_forward(self, model) -> None:
        """A float model's forward: ``model`` has ``last_logits(tokens [1, n]) -> [1, vocab]``
        and ``release_buffers()`` (the training model with this file's weights)."""
        if self.cfg.quantize:
            raise PoppinsError("attach_float_forward: this is a ternary model")
        self.float_model = model

    @classmethod
    def load(cls, path, threads: Optional[int] = None, verify: bool = True,
             use_reference: bool = False) -> "Engine":
        """Load ``path`` (a model directory or model.poppins), memory-mapped."""
        mf = load_model_file(resolve_model_path(path), mmap=True, verify=verify)
        return cls(mf, threads=threads, use_reference=use_reference)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_json_str(self.file.tokenizer_json,
                                                      where=f"{self.path} (tokenizer)")
        return self._tokenizer

    @property
    def context_length(self) -> int:
        return self.cfg.context_length

    def session(self, context: Optional[int] = None, threads: Optional[int] = None,
                compiled_step: Optional[bool] = None, team: Optional[str] = None) -> "Session":
        return Session(self, context=context, threads=threads, compiled_step=compiled_step,
                       team=team)

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: packed ternary codes, norms, the head (the
        embedding row is negligible)."""
        n = 0
        for L in self.layers:
            n += sum(w.data.nbytes for w in (L.wo, L.w_up, L.w_down))
            n += sum(b for b, _ in self.attn.ternary_weights(L))
        n += self.head.nbytes
        return n

    def ternary_params(self) -> int:
        n = 0
        for L in self.layers:
            n += sum(w.m * w.k for w in (L.wo, L.w_up, L.w_down))
            n += sum(p for _, p in self.attn.ternary_weights(L))
        return n


class _Scratch:
    """Activations for n tokens at a time (allocated once per n)."""

    def __init__(self, cfg: ModelConfig, n: int):
        d, H, hd, F = cfg.dim, cfg.heads, cfg.head_dim, cfg.hidden_dim
        # 64-byte aligned: the kernels' 32-byte loads then never straddle two cache lines (with
        # the int8 activations from np.empty, 10M's pp128 ran 4,650 instead of 5,100 tok/s)
        e = lambda *s: aligned_empty(s, np.float32)  # noqa: E731
        self.n = n
        self.x = e(n, d)
        self.o = e(n, H * hd)
        self.u = e(n, F)
        wide = max(d, F, H * hd)
        self._q8 = aligned_empty(n * wide, np.int8)
        self.qs = e(n)
        mx = attention_unit(cfg).scratch(self, cfg, n)
        self._acc = aligned_empty(n * max(mx, d, F, H * hd), np.int32)

    def q8(self, k: int) -> np.ndarray:
        """A C-contiguous int8 [n, k] view of the quantized-activation buffer."""
        return self._q8[:self.n * k].reshape(self.n, k)

    def acc(self, m: int) -> np.ndarray:
        return self._acc[:self.n * m].reshape(self.n, m)


class Session:
    """One KV cache: feed tokens with :meth:`forward`; ``pos`` tokens are cached so far."""

    def __init__(self, engine: Engine, context: Optional[int] = None,
                 threads: Optional[int] = None, compiled_step: Optional[bool] = None,
                 team: Optional[str] = None):
        self.engine = engine
        cfg = engine.cfg
        ctx = cfg.context_length if context is None or context <= 0 else int(context)
        if ctx > cfg.context_length:
            raise PoppinsError(f"context {ctx} is longer than the model's context length "
                               f"({cfg.context_length}, the longest the model was trained on)")
        self.context = ctx
        self.threads = engine.threads if threads is None else resolve_threads(threads)
        self.pos = 0
        #: the KV cache, laid out by the attention unit: two named lists of per-layer arrays
        #: (also attributes of the session: k, v for MHA/GQA; ckv, kr for MLA)
        self.cache: Dict[str, List[np.ndarray]] = engine.attn.new_cache(cfg, ctx)
        for name, arrays in self.cache.items():
            setattr(self, name, arrays)
        self._scratch: Dict[int, _Scratch] = {}
        self._float_ids: Optional[np.ndarray] = None
        self._logits = np.empty((1, cfg.vocab_size), np.float32)
        #: the compiled per-token step (one token through every layer, GIL released), used
        #: for single-token forward() calls; None: the Python path (ops one by one)
        self._step = None
        if compiled_step is None or compiled_step:
            if engine.plan is not None:
                a, b = self.cache.values()
                self._step = ops._mod().DecodeSession(engine.plan, a, b, ctx)
                self._step.fixed_team(team_policy(team) == "fixed")
                if engine.team_choice is not None:
                    self._step.set_choice(engine.team_choice)
            elif compiled_step:
                raise PoppinsError("the compiled decode step needs the poppins._engine "
                                   "extension (build it with `make build`)")

    def reset(self) -> None:
        self.pos = 0

    def keep_team_choice(self) -> None:
        """Let the engine's next sessions start from the team size this one arrived at (call
        it from the thread that drove this session, once it is done)."""
        if self._step is not None:
            self.engine.team_choice = self._step.choice()

    @property
    def thread_steps(self) -> Tuple[int, int]:
        """(compiled decode steps run by a team of ``threads`` threads, steps run by one
        thread): with threads > 1 and the "auto" team policy a step runs on whichever is faster
        at the time (see eng_decode_step in ext/engine/engine_step.c).  (0, 0) on the Python
        path."""
        return self._step.tokens() if self._step is not None else (0, 0)

    def cache_bytes(self) -> int:
        return sum(a.nbytes for arrays in self.cache.values() for a in arrays)

    def _scr(self, n: int) -> _Scratch:
        s = self._scratch.get(n)
        if s is None:
            if len(self._scratch) > 2:
                self._scratch = {k: v for k, v in self._scratch.items() if k == 1}
            s = _Scratch(self.engine.cfg, n)
            self._scratch[n] = s
        return s

    def _linear(self, w: TK.PackedTernary, x: np.ndarray, qs: np.ndarray, s: "_Scratch",
                out: np.ndarray, accumulate: bool = False) -> None:
        """out (+)= (W_t @ x) * w_scale / qs, x [n, k] int8 C-contiguous, exact int32 sums."""
        n = x.shape[0]
        e = self.engine
        th = self.threads if w.m * w.k * n >= PARALLEL_MIN_WORK else 1
        a = s.acc(w.m)
        if n == 1:
            e.tern.matvec(w.data, w.k, x[0], a[0], th, e.kernel)
        else:
            e.tern.matmul(w.data, w.k, x, a, th, e.kernel)
        e.op["dequant"](a, w.scale, qs, out, accumulate, self.threads)

    def forward(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``tokens`` to the cache; return the logits of the last one ([vocab]), or of
        every one ([n, vocab]) when ``all_logits``."""
        e, cfg = self.engine, self.engine.cfg
        toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32).reshape(-1))
        n = toks.shape[0]
        if n == 0:
            raise PoppinsError("forward() needs at least one token")
        if self.pos + n > self.context:
            raise PoppinsError(f"{self.pos + n} tokens do not fit the context of "
                               f"{self.context} tokens")
        if toks.min() < 0 or toks.max() >= cfg.vocab_size:
            raise PoppinsError(f"token id out of range 0..{cfg.vocab_size - 1}")
        if not cfg.quantize:
            if e.float_model is None:
                raise PoppinsError("this is a float model (trained with --float): load it "
                                   "with poppins.Model.load, which runs it through the "
                                   "training forward pass", file=str(e.path))
            return self._float_forward(toks, all_logits)
        if n == 1 and not all_logits and self._step is not None:
            self._step.step(int(toks[0]), self.pos, self._logits[0], self.threads)
            self.pos += 1
            return self._logits[0].copy()
        op, th = e.op, self.threads
        s = self._scr(n)
        x = s.x
        op["embed"](e.emb, e.emb_scale, toks, x, th)
        pos0 = self.pos
        H, hd, eps = cfg.heads, cfg.head_dim, cfg.norm_eps
        for i, L in enumerate(e.layers):
            q8 = s.q8(cfg.dim)
            op["rmsnorm_quant"](x, L.attn_norm, eps, q8, s.qs, th)
            e.attn.step(self, i, L, s, q8, pos0, n)
            o8 = s.q8(H * hd)
            op["quant_rows"](s.o, o8, s.qs, th)
            self._linear(L.wo, o8, s.qs, s, x, accumulate=True)
            op["rmsnorm_quant"](x, L.ffn_norm, eps, q8, s.qs, th)
            self._linear(L.w_up, q8, s.qs, s, s.u)
            a8 = s.q8(cfg.hidden_dim)
            op["relu2_quant"](s.u, a8, s.qs, th)
            self._linear(L.w_down, a8, s.qs, s, x, accumulate=True)
        self.pos += n
        rows = x if all_logits else x[n - 1:n]
        hf = np.empty(rows.shape, np.float32)
        op["rmsnorm"](rows, e.final_norm, eps, hf, th)
        if all_logits:
            out = np.empty((n, cfg.vocab_size), np.float32)
        else:
            out = self._logits
        op["head_logits"](hf, e.head, e.head_scale, out, th)
        return out.copy() if all_logits else out[0].copy()

    def _float_forward(self, toks: np.ndarray, all_logits: bool) -> np.ndarray:
        """A float model: the training forward over every token so far (no KV cache)."""
        if self.pos == 0 or self._float_ids is None:
            self._float_ids = np.zeros(self.context, np.int32)
        n = toks.shape[0]
        self._float_ids[self.pos:self.pos + n] = toks
        m = self.engine.float_model
        rows = []
        with self.engine._float_lock:
            for end in (range(self.pos + 1, self.pos + n + 1) if all_logits
                        else [self.pos + n]):
                rows.append(np.asarray(m.last_logits(self._float_ids[None, :end])[0],
                                       np.float32))
            m.release_buffers()
        self.pos += n
        return np.stack(rows) if all_logits else rows[0].copy()

    def next_token(self, token: int, sampler, recent: np.ndarray, n_recent: int) -> int:
        """Feed ``token``, then sample the next one with ``sampler`` (a
        poppins.engine.sampling.Sampler; ``recent[:n_recent]`` int32 is the context so far).
        With the extension built this is one compiled call without the GIL (decode step and
        C sampler); else forward() and the sampler one after the other: the same tokens."""
        if self._step is not None:
            if self.pos + 1 > self.context:
                raise PoppinsError(f"{self.pos + 1} tokens do not fit the context of "
                                   f"{self.context} tokens")
            if not 0 <= int(token) < self.engine.cfg.vocab_size:
                raise PoppinsError(f"token id out of range 0..{self.engine.cfg.vocab_size - 1}")
            tok, sampler.state = self._step.step_sample(
                int(token), self.pos, self._logits[0], self.threads, sampler.params,
                sampler.state, recent, int(n_recent))
            self.pos += 1
            return int(tok)
        return sampler.sample(self.forward([token]), recent[:n_recent])

    def generate(self, token: int, sampler, history: np.ndarray, n_hist: int, max_new: int,
                 stop_ids) -> int:
        """Feed ``token`` and keep sampling, appending to ``history`` (int32; its first
        ``n_hist`` entries are the context so far, ``token`` last), until a token of
        ``stop_ids`` (two ids), ``max_new`` new tokens or the context end.  Returns how many
        tokens were appended.  With the extension built the whole loop is one compiled call
        without the GIL; else next_token() in a loop: the same tokens."""
        max_new = max(0, min(int(max_new), self.context - self.pos, len(history) - n_hist))
        if self._step is not None:
            if not 0 <= int(token) < self.engine.cfg.vocab_size:
                raise PoppinsError(f"token id out of range 0..{self.engine.cfg.vocab_size - 1}")
            a, b = (int(t) for t in stop_ids)
            n, sampler.state = self._step.generate(
                int(token), self.pos, self._logits[0], self.threads, sampler.params,
                sampler.state, history, int(n_hist), max_new, a, b)
            self.pos += int(n)
            return int(n)
        n = 0
        while n < max_new:
            token = self.next_token(token, sampler, history, n_hist + n)
            history[n_hist + n] = token
            n += 1
            if token in stop_ids:
                break
        return n

"""ModelConfig: the single source of the model's sizes, saved as JSON with every checkpoint
and in the header of every model file.

It lives with the model file format (the engine reads it; training writes it and imports it
from here, also as ``poppins.model.ModelConfig``).  What depends on the attention type (its
derived sizes and extra rules) is asked of the attention unit
(:mod:`poppins.engine.attention`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import PoppinsError
from .attention import ATTENTION, attention_unit

#: Magic and version of the JSON document written by :meth:`ModelConfig.to_json`.
CONFIG_MAGIC = "poppins-model-config"
CONFIG_VERSION = 1


@dataclass
class ModelConfig:
    """Sizes and switches of the ternary transformer.

    ``head_dim = dim // heads`` (the query/key width of MHA/GQA, and the no-rope query/key
    width and value width of MLA).  ``ffn_dim`` defaults to ``4 * dim``.  MLA compresses keys
    and values into ``kv_latent_dim`` (default ``dim // 2``), optionally queries into
    ``q_latent_dim`` (default: no query compression), and carries a decoupled rotary key of
    ``rope_dim`` (default ``head_dim // 2``) shared by all heads, as in DeepSeek-V2.
    ``quantize=False`` runs the same code as a float model (quantizers bypassed).
    """

    vocab_size: int = 381
    dim: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: Optional[int] = None
    attention: str = "mha"
    kv_latent_dim: Optional[int] = None
    q_latent_dim: Optional[int] = None
    rope_dim: Optional[int] = None
    ffn_dim: Optional[int] = None
    context_length: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    quantize: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def n_kv_heads(self) -> int:
        return attention_unit(self).n_kv_heads(self)

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 4 * self.dim

    @property
    def kv_latent(self) -> int:
        return self.kv_latent_dim if self.kv_latent_dim is not None else max(1, self.dim // 2)

    @property
    def rope_width(self) -> int:
        """Rotary width: head_dim for MHA/GQA, rope_dim for MLA's decoupled key."""
        return attention_unit(self).rope_width(self)

    # ----------------------------------------------------------------- validation
    def validate(self) -> "ModelConfig":
        errs = []

        def pos_int(name, value, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                errs.append(f"model config: {name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "dim", "layers", "heads", "context_length"):
            pos_int(name, getattr(self, name))
        for name in ("kv_heads", "kv_latent_dim", "q_latent_dim", "rope_dim", "ffn_dim"):
            pos_int(name, getattr(self, name), allow_none=True)
        if not isinstance(self.attention, str) or self.attention not in ATTENTION:
            names = " or ".join(repr(n) for n in ATTENTION)
            errs.append(f"model config: attention must be {names}, got {self.attention!r}")
        if self.dtype not in ("float32", "float64"):
            errs.append(f"model config: dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in ("tie_embeddings", "quantize"):
            if not isinstance(getattr(self, name), bool):
                errs.append(f"model config: {name} must be true or false, "
                            f"got {getattr(self, name)!r}")
        for name in ("rope_theta", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                errs.append(f"model config: {name} must be a positive number, got {v!r}")
        if not errs:
            if self.dim % self.heads:
                errs.append(f"model config: dim ({self.dim}) must be a multiple of heads "
                            f"({self.heads})")
            else:
                errs += attention_unit(self).check(self)
        if errs:
            raise PoppinsError("\n".join(errs))
        return self

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        doc = {"magic": CONFIG_MAGIC, "version": CONFIG_VERSION, "config": self.to_dict()}
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: Optional[str] = None) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PoppinsError(f"unknown model config field(s): {', '.join(unknown)}", file=source)
        try:
            return cls(**d)
        except PoppinsError as exc:
            if source is None:
                raise
            raise PoppinsError("; ".join(p.message for p in exc.problems), file=source) from None

    @classmethod
    def from_json(cls, text: str, source: Optional[str] = None) -> "ModelConfig":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PoppinsError(f"model config is not valid JSON: {exc.msg}", file=source,
                               line=exc.lineno) from None
        if not isinstance(doc, dict) or doc.get("magic") != CONFIG_MAGIC:
            raise PoppinsError(f"not a poppins model config (magic {CONFIG_MAGIC!r} missing)",
                               file=source)
        if doc.get("version") != CONFIG_VERSION:
            raise PoppinsError(f"model config version {doc.get('version')!r} is not supported "
                               f"(this poppins reads version {CONFIG_VERSION})", file=source)
        cfg = doc.get("config")
        if not isinstance(cfg, dict):
            raise PoppinsError("model config: 'config' must be an object", file=source)
        return cls.from_dict(cfg, source=source)

    def save(self, path) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(p)

    @classmethod
    def load(cls, path) -> "ModelConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PoppinsError(f"cannot read model config: {exc.strerror}", file=str(p)) from None
        return cls.from_json(text, source=str(p))

    def replace(self, **changes) -> "ModelConfig":
        d = self.to_dict()
        d.update(changes)
        return ModelConfig(**d)


def param_shapes(cfg: ModelConfig):
    """[(name, shape, kind)] of every parameter, in the training flat-buffer order; kind:
    'embed', 'bitlinear', 'head', 'norm'.  The names are the model file's tensor names."""
    d, V, H, hd = cfg.dim, cfg.vocab_size, cfg.heads, cfg.head_dim
    unit = attention_unit(cfg)
    mats, norms = [("tok_emb", (V, d), "embed")], []
    for i in range(cfg.layers):
        p = f"layers.{i}."
        am, an = unit.params(cfg, p)
        mats += am
        norms += an
        mats.append((p + "attn.wo", (d, H * hd), "bitlinear"))
        mats.append((p + "ffn.w_up", (cfg.hidden_dim, d), "bitlinear"))
        mats.append((p + "ffn.w_down", (d, cfg.hidden_dim), "bitlinear"))
        norms.append((p + "attn_norm", (d,), "norm"))
        norms.append((p + "ffn_norm", (d,), "norm"))
    norms.append(("final_norm", (d,), "norm"))
    if not cfg.tie_embeddings:
        mats.append(("head", (V, d), "head"))
    return mats + norms

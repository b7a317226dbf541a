"""Export a trained model (``OUT/model.poppins``) to other runtimes.

* :func:`poppins.export.gguf.export_gguf` / :func:`~poppins.export.gguf.write_gguf`: a GGUF
  file (llama.cpp's ``arcee`` architecture, TQ2_0 ternary rows) with the tokenizer and the
  chat template;
* :func:`poppins.export.hf.export_hf`: a Hugging Face folder (``ArceeForCausalLM``,
  safetensors) that transformers loads;
* :func:`poppins.export.template.chat_template`: the Jinja template of our token layout.

The format libraries (``gguf``, ``safetensors``) are the optional extra ``poppins[export]``;
they are imported only when an export runs.  ``python -m poppins export`` is the CLI.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ..engine.config import ModelConfig
from ..engine.packing import TernaryTensor
from ..errors import PoppinsError

EXTRA_HINT = "pip install 'poppins[export]'"


def require(module: str):
    """Import an export library or fail with the install hint (a PoppinsError)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PoppinsError(f"exporting needs the '{module}' package: {EXTRA_HINT}") from None


@dataclass
class Source:
    """What the exporters read: the config, the tensors by poppins name, the tokenizer.json
    text (or None) and the default system prompt."""
    config: ModelConfig
    tensors: Mapping[str, Any]
    tokenizer_json: Optional[str] = None
    default_system: Optional[str] = None
    path: Optional[Path] = None


def load_source(model: Union[str, Path, Source]) -> Source:
    """A Source from a model file, an OUT folder holding model.poppins, or a Source."""
    if isinstance(model, Source):
        return model
    from ..engine.modelfile import load_model_file
    p = Path(model)
    if p.is_dir():
        p = p / "model.poppins"
    if not p.is_file():
        raise PoppinsError(f"{p}: no model file here (train first: python -m poppins train)")
    mf = load_model_file(p)
    cfg = ModelConfig.from_dict(dict(mf.config), source=str(p))
    return Source(cfg, mf.tensors, mf.tokenizer_json, mf.default_system, p)


def check_exportable(cfg: ModelConfig, fmt: str) -> None:
    """Only the MHA/GQA unit's layout (one fused ``wqkv``, full-width rope) maps onto
    arcee's attention."""
    from ..engine.attention import MHA, attention_unit
    if not isinstance(attention_unit(cfg), MHA):
        raise PoppinsError(
            f"{fmt} export supports MHA/GQA models only; this model uses attention "
            f"'{cfg.attention}': llama.cpp's and transformers' DeepSeek-style MLA expect "
            f"DeepSeek's full layout (MoE/dense FFN with gated SiLU, YaRN rope, separate "
            f"q/kv norms and a different rope split), not poppins' squared-ReLU block")


def ternary_values(t) -> np.ndarray:
    """int8 ternary values of a TernaryTensor (or of a float array already ternary)."""
    if isinstance(t, TernaryTensor):
        return t.values()
    raise PoppinsError("expected a ternary tensor")


def dense(tensors: Mapping[str, Any], name: str) -> np.ndarray:
    """A dense tensor as float32: int8 rows times their ``NAME.scale``, f16/f32 as they are."""
    a = tensors[name]
    if isinstance(a, TernaryTensor):
        return a.dequantize()
    a = np.asarray(a)
    if a.dtype == np.int8:
        scale = np.asarray(tensors[name + ".scale"], dtype=np.float32)
        return a.astype(np.float32) * scale[:, None]
    return np.asarray(a, dtype=np.float32)


def split_qkv(cfg: ModelConfig, t: TernaryTensor):
    """The fused ``attn.wqkv`` ternary values split into q, k, v rows (one shared scale)."""
    H, Hk, hd = cfg.heads, cfg.n_kv_heads, cfg.head_dim
    v = ternary_values(t)
    return v[:H * hd], v[H * hd:(H + Hk) * hd], v[(H + Hk) * hd:], float(t.scale)

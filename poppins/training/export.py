"""Export a trained model to ``OUT/model.poppins`` (the file the engine loads).

    python -c "import poppins.training.export as e; e.export_from_out_dir('.poppins')"

Export is the writing side: it lives with training and writes through the one model file
format (:func:`poppins.engine.modelfile.write_model_file`); the engine only reads.

What is written (tensor names are the training model's parameter names):

- every BitLinear weight as ``ternary2`` codes with its absmean scale, quantized by the very
  kernel the training forward uses (so the engine sees exactly the weights training saw);
  a float model (``--float``, ``quantize=False``: no quantizers in its forward) keeps its
  weights as ``f32`` and its embedding/head as ``f32`` whatever ``head_dtype`` asks, since
  ternarizing them gave a different model (issue 12: ``TheTheThe...``); the engine runs such a
  model through the training forward pass (poppins.engine.runtime);
- the norm gains as ``f32``;
- the embedding (also the output head when tied, the default) as ``f32``, ``f16`` or ``i8``
  (``head_dtype``); int8 rows are absmax-quantized per row (``q = rint(E * 127 / max|E_row|)``)
  with the dequantization factors in ``tok_emb.scale`` (f32, one per row);
- an untied ``head`` the same way (``head.scale``).

The header carries the ModelConfig dict, the tokenizer.json text, the source map and the
default system prompt (from the data stage's manifest).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..engine.modelfile import write_model_file
from ..engine.packing import TernaryTensor
from ..errors import PoppinsError
from ..model import kernels as MK

HEAD_DTYPES = ("int8", "f16", "f32")
ENGINE_FORMAT = 1


def _dense(name: str, a: np.ndarray, head_dtype: str, out: Dict[str, Any]) -> None:
    a = np.asarray(a, dtype=np.float32)
    if head_dtype == "f32":
        out[name] = np.ascontiguousarray(a)
    elif head_dtype == "f16":
        out[name] = a.astype(np.float16)
    else:
        amax = np.max(np.abs(a), axis=1)
        scale = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 1)
        scale = scale.astype(np.float32)
        out[name] = np.clip(np.rint(a * scale[:, None]), -127, 127).astype(np.int8)
        out[name + ".scale"] = (np.float32(1) / scale).astype(np.float32)


def ternarize(w: np.ndarray) -> TernaryTensor:
    """The training forward's weight quantizer (absmean, round half to even) -> codes."""
    w = np.ascontiguousarray(w)
    out = np.empty_like(w)
    scale = MK.weight_quant(w, out, 1)
    s = w.dtype.type(scale)
    t = np.rint(out / s) if s != 0 else np.zeros_like(out)
    t = np.clip(t, -1, 1).astype(np.int8)
    return TernaryTensor.from_values(t, float(np.float32(scale)))


def model_tensors(model, head_dtype: str = "int8") -> Dict[str, Any]:
    """{name: array or TernaryTensor} of a poppins.model.Model, in the file's order."""
    if head_dtype not in HEAD_DTYPES:
        raise PoppinsError(f"head_dtype must be one of {', '.join(HEAD_DTYPES)}, "
                           f"got {head_dtype!r}")
    out: Dict[str, Any] = {}
    quantized = bool(model.cfg.quantize)
    if not quantized:
        head_dtype = "f32"   # a float model's embedding is used unquantized by its forward
    for name, _shape, kind in model.layout:
        p = model.params[name]
        if kind == "bitlinear" and quantized:
            out[name] = ternarize(p)
        elif kind in ("embed", "head"):
            _dense(name, p, head_dtype, out)
        else:
            out[name] = np.ascontiguousarray(p, dtype=np.float32)
    return out


def export_model(model, path, *, tokenizer_json: str, sources: Mapping[str, Any],
                 default_system: Optional[str], head_dtype: str = "int8",
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (a trained poppins.model.Model) to ``path`` atomically; returns it."""
    cfg = model.cfg.to_dict()
    if not model.cfg.quantize:
        head_dtype = "f32"
    ex = {"engine_format": ENGINE_FORMAT, "head_dtype": head_dtype,
          "trained_quantized": bool(model.cfg.quantize)}
    ex.update(dict(extra or {}))
    return write_model_file(path, config=cfg, tensors=model_tensors(model, head_dtype),
                            tokenizer_json=tokenizer_json, sources=dict(sources or {}),
                            default_system=default_system, extra=ex)


def export_from_out_dir(out_dir, path=None, *, head_dtype: str = "int8") -> Path:
    """Export ``OUT/checkpoints/last.ckpt`` with OUT's tokenizer.json and manifest.json to
    ``OUT/model.poppins`` (or ``path``)."""
    from .trainer import load_trained   # function-level: trainer imports this module

    out = Path(out_dir)
    try:
        tok = (out / "tokenizer.json").read_text(encoding="utf-8")
    except OSError as exc:
        raise PoppinsError(f"cannot read the tokenizer: {exc.strerror}",
                           file=str(out / "tokenizer.json")) from None
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise PoppinsError(f"cannot read the manifest: {exc.strerror}",
                           file=str(out / "manifest.json")) from None
    except json.JSONDecodeError as exc:
        raise PoppinsError(f"manifest is not valid JSON: {exc.msg}",
                           file=str(out / "manifest.json"), line=exc.lineno) from None
    model = load_trained(out, threads=1)
    return export_model(model, Path(path) if path else out / "model.poppins",
                        tokenizer_json=tok, sources=manifest.get("sources") or {},
                        default_system=manifest.get("default_system"), head_dtype=head_dtype)

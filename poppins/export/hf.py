"""Hugging Face export: a folder that ``transformers`` loads as ``ArceeForCausalLM``.

    from poppins.export.hf import export_hf
    export_hf("OUT/model.poppins", "my-model-hf")    # then AutoModelForCausalLM.from_pretrained

Files: ``config.json`` (arcee: RMSNorm, rotate-half RoPE (our half-split pairs, so no
permutation), squared-ReLU FFN ``relu2``, tied or untied head), ``model.safetensors`` (every
ternary projection as its values times its scale; the fused ``wqkv`` split into
``q_proj`` / ``k_proj`` / ``v_proj``; float32 or bfloat16), ``tokenizer.json`` (ours),
``tokenizer_config.json`` (ours plus the chat template of :mod:`poppins.export.template`
with the model's default system prompt) and ``generation_config.json`` (greedy, stops at
``</ai>`` or ``</sample>``).

transformers runs float activations where poppins quantizes each token's activations to
int8, so logits differ slightly (greedy answers agree on nearly every prompt).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ..corpus import tokens as T
from ..errors import PoppinsError
from . import Source, check_exportable, dense, load_source, require, split_qkv, ternary_values

DTYPES = ("float32", "bfloat16")


def hf_config(cfg, dtype: str = "float32") -> Dict[str, Any]:
    """config.json of an ArceeForCausalLM with the sizes of ``cfg`` (a ModelConfig)."""
    theta = float(cfg.rope_theta)
    return {
        "architectures": ["ArceeForCausalLM"],
        "model_type": "arcee",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": float(cfg.norm_eps),
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "bos_token_id": T.SAMPLE,
        "eos_token_id": list(T.STOP_IDS),
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def hf_tensors(src: Source) -> Dict[str, np.ndarray]:
    """{transformers name: float32 array} of the model."""
    cfg, t = src.config, src.tensors
    out: Dict[str, np.ndarray] = {"model.embed_tokens.weight": dense(t, "tok_emb")}
    for i in range(cfg.layers):
        p, h = f"layers.{i}.", f"model.layers.{i}."
        q, k, v, s = split_qkv(cfg, t[p + "attn.wqkv"])
        sc = np.float32(s)
        out[h + "self_attn.q_proj.weight"] = q.astype(np.float32) * sc
        out[h + "self_attn.k_proj.weight"] = k.astype(np.float32) * sc
        out[h + "self_attn.v_proj.weight"] = v.astype(np.float32) * sc
        for hn, pn in (("self_attn.o_proj", "attn.wo"), ("mlp.up_proj", "ffn.w_up"),
                       ("mlp.down_proj", "ffn.w_down")):
            out[h + hn + ".weight"] = (ternary_values(t[p + pn]).astype(np.float32)
                                       * np.float32(t[p + pn].scale))
        out[h + "input_layernorm.weight"] = dense(t, p + "attn_norm")
        out[h + "post_attention_layernorm.weight"] = dense(t, p + "ffn_norm")
    out["model.norm.weight"] = dense(t, "final_norm")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = dense(t, "head")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def _save_safetensors(tensors: Dict[str, np.ndarray], path: Path, dtype: str) -> None:
    require("safetensors")
    from safetensors.numpy import save_file
    if dtype == "float32":
        save_file(tensors, str(path), metadata={"format": "pt"})
        return
    # safetensors' NumPy API has no bfloat16: write the header ourselves around the bits
    import struct
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = _bf16_bits(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def export_hf(model: Union[str, Path, Source], out_dir: Union[str, Path],
              dtype: str = "float32") -> Dict[str, Any]:
    """Write the Hugging Face folder ``out_dir`` for ``model`` (a model file, an OUT folder
    or a Source).  Returns a report: {"path", "bytes" (of model.safetensors)}."""
    from ..tokenizer import hf_json
    if dtype not in DTYPES:
        raise PoppinsError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    require("safetensors")
    src = load_source(model)
    check_exportable(src.config, "Hugging Face")
    if src.tokenizer_json is None:
        raise PoppinsError("the model has no tokenizer; a Hugging Face folder needs one")
    where = str(src.path or "model")
    try:
        tok_obj = json.loads(src.tokenizer_json)
    except json.JSONDecodeError:
        raise PoppinsError("the model file's tokenizer is not valid JSON", file=where) from None
    _vocab, added, _merges = hf_json.parse(tok_obj, where)
    special = [c for c, _, s in sorted(added, key=lambda a: a[1]) if s]
    requested = [c for c, _, s in sorted(added, key=lambda a: a[1]) if not s]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    _save_safetensors(hf_tensors(src), weights, dtype)
    tok_cfg = hf_json.with_chat_template(hf_json.config(special, requested), src.default_system)
    files = {
        "config.json": hf_config(src.config, dtype),
        "generation_config.json": {"bos_token_id": T.SAMPLE, "eos_token_id": list(T.STOP_IDS),
                                   "do_sample": False},
        "tokenizer_config.json": tok_cfg,
    }
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n",
                                encoding="utf-8")
    (out / "tokenizer.json").write_text(src.tokenizer_json, encoding="utf-8")
    return {"path": str(out), "bytes": weights.stat().st_size}

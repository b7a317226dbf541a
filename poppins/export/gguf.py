"""GGUF export for llama.cpp: architecture ``arcee`` (pre-norm RMSNorm, Q/K/V, RoPE, output
projection, squared-ReLU FFN up -> relu^2 -> down, final RMSNorm, tied or untied head).

    from poppins.export.gguf import write_gguf
    write_gguf("OUT/model.poppins", "model.gguf")          # or write_gguf(Source(cfg, tensors), ...)

Tensors (llama.cpp names; GGUF dims are reversed by the writer):

* ternary projections: ``TQ2_0`` when the row length is a multiple of 256 (its per-256 f16
  scale is our per-tensor scale: lossless up to the f16 rounding of the scale), otherwise
  ``F16`` (+-scale rounded to f16: the same rounding);
* the fused ``wqkv`` is split into ``attn_q`` / ``attn_k`` / ``attn_v`` (same scale); Q and K
  rows are permuted from our half-split rotary pairs (i, i + hd/2) to llama.cpp's adjacent
  pairs (rope type NORM), as convert_hf_to_gguf.py does for Llama;
* the embedding (and an untied head) as ``F32`` (int8 rows times their scale: exact), norm
  gains ``F32``.

Tokenizer: byte-level BPE (``gpt2``) with our merges; the pre-tokenizer ``dbrx`` runs the
GPT-4 split we use (``llama-bpe`` would be the same split but turns on ``ignore_merges``);
special tokens are CONTROL tokens, requested tokens USER_DEFINED (matched in any text, like
ours); ``<sample>`` is BOS (never added automatically: the chat template writes it),
``</sample>`` EOS and ``</ai>`` EOT, so generation stops after one answer; the chat
template of :mod:`poppins.export.template` is embedded (llama-server's /v1/chat/completions
works with the file alone).  Without a tokenizer (random-weight benchmark models) a
placeholder vocabulary of the right size is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..engine.config import ModelConfig
from ..errors import PoppinsError
from . import Source, check_exportable, dense, load_source, require, split_qkv, ternary_values
from .template import chat_template

ARCH = "arcee"
TOKENIZER_PRE = "dbrx"


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q or K projection from half-split rotary pairs to adjacent pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def ternary_type(k: int) -> str:
    """The GGML type a ternary matrix with rows of ``k`` weights is stored as."""
    if k % 256 == 0:
        return "TQ2_0"
    # not Q8_0: llama.cpp 0.3.36's CPU backend crashes (SIGSEGV at warm-up) on Q8_0 rows of 64
    return "F16"


def _add_ternary(writer, G, name: str, values: np.ndarray, scale: float) -> str:
    kind = ternary_type(values.shape[1])
    w = values.astype(np.float32) * np.float32(scale)
    if kind == "F16":
        writer.add_tensor(name, w.astype(np.float16))
    else:
        qt = getattr(G.GGMLQuantizationType, kind)
        writer.add_tensor(name, G.quants.quantize(w, qt), raw_dtype=qt)
    return kind


def _vocab(src: Source, G):
    """(tokens, types, merges, special ids) of the tokenizer (or a placeholder vocabulary)."""
    from ..corpus import tokens as T
    from ..tokenizer import hf_json
    V = src.config.vocab_size
    TT = G.TokenType
    if src.tokenizer_json is None:
        # the 256 bytes, one merge (llama.cpp refuses a gpt2 vocabulary without merges),
        # then control placeholders up to the vocabulary size
        b2u = hf_json.bytes_to_unicode()
        space = b2u[ord(" ")]
        toks = [b2u[i] for i in range(256)] + [space + space]
        toks = (toks + [f"<|placeholder_{i}|>" for i in range(len(toks), V)])[:V]
        types = [TT.NORMAL if i <= 256 else TT.CONTROL for i in range(V)]
        return toks, types, ([f"{space} {space}"] if V > 256 else []), {}
    import json
    vocab_bytes, added, merges = hf_json.parse(json.loads(src.tokenizer_json),
                                               str(src.path or "tokenizer.json"))
    if len(vocab_bytes) != V:
        raise PoppinsError(f"the tokenizer has {len(vocab_bytes)} ids, the model {V}",
                           file=str(src.path) if src.path else None)
    toks = [hf_json.to_byte_level(b) for b in vocab_bytes]
    types = [TT.NORMAL] * V
    for content, tid, special in added:
        toks[tid] = content
        types[tid] = TT.CONTROL if special else TT.USER_DEFINED
    merge_strs = [f"{toks[a]} {toks[b]}" for a, b, _ in merges]
    ids = {"bos": T.SAMPLE, "eos": T.END_SAMPLE, "eot": T.END_AI}
    return toks, types, merge_strs, ids


def write_gguf(model: Union[str, Path, Source], path: Union[str, Path],
               name: str = "poppins") -> Dict[str, Any]:
    """Write ``model`` (a model file, an OUT folder or a :class:`~poppins.export.Source`
    of a ModelConfig and poppins-named tensors) as a GGUF file at ``path``.
    Returns a report: {"path", "bytes", "types": {tensor: ggml type}}."""
    G = require("gguf")
    src = load_source(model)
    cfg: ModelConfig = src.config
    check_exportable(cfg, "GGUF")
    t = src.tensors
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    H, Hk, hd = cfg.heads, cfg.n_kv_heads, cfg.head_dim
    w = G.GGUFWriter(str(tmp), ARCH)
    w.add_name(name)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(H)
    w.add_head_count_kv(Hk)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    toks, types, merges, ids = _vocab(src, G)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(TOKENIZER_PRE if src.tokenizer_json is not None else "default")
    w.add_token_list(toks)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    if ids:
        w.add_bos_token_id(ids["bos"])
        w.add_eos_token_id(ids["eos"])
        w.add_eot_token_id(ids["eot"])
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        w.add_chat_template(chat_template(src.default_system))
    types_out: Dict[str, str] = {}

    def f32(gname, a):
        w.add_tensor(gname, np.ascontiguousarray(a, dtype=np.float32))
        types_out[gname] = "F32"

    f32("token_embd.weight", dense(t, "tok_emb"))
    for i in range(cfg.layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", dense(t, p + "attn_norm"))
        q, k, v, s = split_qkv(cfg, t[p + "attn.wqkv"])
        for gname, vals in ((b + "attn_q.weight", rope_permute(q, H)),
                            (b + "attn_k.weight", rope_permute(k, Hk)),
                            (b + "attn_v.weight", v)):
            types_out[gname] = _add_ternary(w, G, gname, vals, s)
        for gname, pname in ((b + "attn_output.weight", p + "attn.wo"),
                             (b + "ffn_up.weight", p + "ffn.w_up"),
                             (b + "ffn_down.weight", p + "ffn.w_down")):
            types_out[gname] = _add_ternary(w, G, gname, ternary_values(t[pname]),
                                            float(t[pname].scale))
        f32(b + "ffn_norm.weight", dense(t, p + "ffn_norm"))
    f32("output_norm.weight", dense(t, "final_norm"))
    if not cfg.tie_embeddings:
        f32("output.weight", dense(t, "head"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return {"path": str(path), "bytes": path.stat().st_size, "types": types_out}


export_gguf = write_gguf

"""Export to GGUF and to a Hugging Face folder, without the peers (llama.cpp / transformers:
tests/test_export_llama_cpp.py, tests/test_export_hf.py): what the files hold, the chat
template against our token layout, the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from poppins.corpus import tokens as T
from poppins.errors import PoppinsError
from poppins.export import Source
from poppins.export.template import chat_template
from poppins.model import Model, ModelConfig
from poppins.special_tokens import SPECIAL_TOKENS
from poppins.training.export import model_tensors

gguf = pytest.importorskip("gguf")


def random_source(dim=64, heads=4, kv_heads=None, ffn_dim=None, tie=True, head_dtype="int8",
                  attention="mha") -> Source:
    cfg = ModelConfig(vocab_size=300, dim=dim, layers=2, heads=heads, kv_heads=kv_heads,
                      ffn_dim=ffn_dim, context_length=48, tie_embeddings=tie,
                      attention=attention)
    m = Model(cfg, seed=5, threads=1)
    return Source(cfg, model_tensors(m, head_dtype))


def _read(path):
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    return r, tensors


def _deq(t) -> np.ndarray:
    from gguf.quants import dequantize
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def _unpermute(w, n_head):
    """Inverse of rope_permute: adjacent pairs back to half-split pairs."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.mark.parametrize("dim,kv_heads,ffn_dim,tie", [
    (64, None, None, True),      # rows of 64 (Q8_0) and 256 (w_down: TQ2_0)
    (256, 2, 512, False),        # TQ2_0 everywhere, GQA, untied head
    (48, None, 200, True),       # rows of 48 and 200: neither /256 nor /32 -> F16
])
def test_gguf_tensors_are_our_weights(tmp_path, dim, kv_heads, ffn_dim, tie):
    from poppins.export.gguf import write_gguf, ternary_type
    src = random_source(dim=dim, kv_heads=kv_heads, ffn_dim=ffn_dim, tie=tie)
    cfg, t = src.config, src.tensors
    rep = write_gguf(src, tmp_path / "m.gguf")
    r, g = _read(tmp_path / "m.gguf")
    assert r.fields["general.architecture"].contents() == "arcee"
    assert r.fields["arcee.block_count"].contents() == cfg.layers
    assert r.fields["arcee.attention.head_count_kv"].contents() == cfg.n_kv_heads
    H, Hk, hd = cfg.heads, cfg.n_kv_heads, cfg.head_dim
    for i in range(cfg.layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        qkv = t[p + "attn.wqkv"]
        full = qkv.values().astype(np.float32)
        # exact up to the f16 rounding of the scale (the stored values are +-1 / 0 times it)
        tol = dict(rtol=2e-3, atol=0)
        q = _unpermute(_deq(g[b + "attn_q.weight"]), H)
        k = _unpermute(_deq(g[b + "attn_k.weight"]), Hk)
        v = _deq(g[b + "attn_v.weight"])
        got = np.concatenate([q, k, v]) / np.float32(qkv.scale)
        np.testing.assert_allclose(got, full, **tol)
        assert np.array_equal(np.rint(got), full)
        for gn, pn in (("attn_output", "attn.wo"), ("ffn_up", "ffn.w_up"),
                       ("ffn_down", "ffn.w_down")):
            tt = t[p + pn]
            got = _deq(g[b + gn + ".weight"])
            assert rep["types"][b + gn + ".weight"] == ternary_type(tt.shape[1])
            assert g[b + gn + ".weight"].tensor_type.name == ternary_type(tt.shape[1])
            np.testing.assert_allclose(got, tt.dequantize(), **tol)
    emb = t["tok_emb"].astype(np.float32) * np.asarray(t["tok_emb.scale"])[:, None]
    assert np.array_equal(_deq(g["token_embd.weight"]), emb)
    assert ("output.weight" in g) == (not tie)


def test_gguf_tokenizer_fields(tmp_path):
    from poppins.export.gguf import write_gguf
    from poppins.tokenizer import hf_json
    src = random_source()
    # a tokenizer: the 125 specials, one requested token, the 256 bytes and a few merges
    vocab = [s.encode() for s in SPECIAL_TOKENS] + [b"python"] + [bytes([i]) for i in range(256)]
    base = len(vocab)
    merges = [(base - 256 + ord("a"), base - 256 + ord("b"))]
    vocab.append(b"ab")
    added = [(s, i, True) for i, s in enumerate(SPECIAL_TOKENS)] + [("python", 125, False)]
    obj = hf_json.build(vocab, added, merges)
    cfg = src.config.replace(vocab_size=len(vocab))
    m = Model(cfg, seed=1, threads=1)
    src = Source(cfg, model_tensors(m), json.dumps(obj), "Be brief.")
    write_gguf(src, tmp_path / "m.gguf")
    r, _ = _read(tmp_path / "m.gguf")
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "dbrx"
    toks = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    assert toks[:125] == list(SPECIAL_TOKENS) and set(types[:125]) == {3}   # CONTROL
    assert toks[125] == "python" and types[125] == 4                        # USER_DEFINED
    assert f["tokenizer.ggml.merges"].contents() == ["a b"]
    assert f["tokenizer.ggml.eot_token_id"].contents() == T.END_AI
    assert f["tokenizer.ggml.eos_token_id"].contents() == T.END_SAMPLE
    assert f["tokenizer.ggml.bos_token_id"].contents() == T.SAMPLE
    assert f["tokenizer.ggml.add_bos_token"].contents() is False
    assert f["tokenizer.chat_template"].contents() == chat_template("Be brief.")


def test_mla_is_refused_with_the_reason(tmp_path):
    from poppins.export.gguf import write_gguf
    src = random_source(attention="mla")
    with pytest.raises(PoppinsError, match="MHA/GQA models only.*mla"):
        write_gguf(src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


# ------------------------------------------------------------------ the chat template
def _render(messages, default_system=None):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    return env.from_string(chat_template(default_system)).render(messages=messages,
                                                                add_generation_prompt=True)


def _spelled(ids):
    return "".join(SPECIAL_TOKENS[i] for i in ids)


class _Plain:
    """A tokenizer stand-in: a text is one id past the specials (kept in ``texts``)."""
    vocab_size = 10 ** 9

    def __init__(self):
        self.texts = []

    def encode(self, text, special=False):
        self.texts.append(text)
        return np.asarray([len(SPECIAL_TOKENS) + len(self.texts) - 1])

    def spell(self, i):
        return SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else self.texts[i - len(SPECIAL_TOKENS)]


@pytest.mark.parametrize("default_system", [None, "Be brief.", 'Say "hi"\nthen {{ go }}'])
def test_template_renders_our_layout(default_system):
    tok = _Plain()

    def layout(msgs, system):
        ids = T.sample_head_ids(tok, system)
        for m in msgs:
            ids += T.turn_ids(tok, m["role"], m["content"])
        return "".join(tok.spell(i) for i in ids)

    conv = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Why?"}]
    assert _render(conv, default_system) == layout(conv, default_system)
    sys_msg = [{"role": "system", "content": "Other."}] + conv
    assert _render(sys_msg, default_system) == layout(conv, "Other.")
    no_sys = [{"role": "system", "content": ""}] + conv
    assert _render(no_sys, default_system) == layout(conv, "")

"""Export to GGUF and to a Hugging Face folder, without the peers (llama.cpp / transformers:
tests/test_export_llama_cpp.py, tests/test_export_hf.py): what the files hold, the chat
template against our token layout, the errors."""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

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

DATA = Path(__file__).parent / "data"
#: answer tokens compared per prompt (the trained answers are shorter; a stop id ends them)
MAX_NEW = 48
#: the models the peer tests (llama.cpp, transformers) compare against, trained once per
#: test process: the built-in example (rows of 64: F16 projections, w_down TQ2_0) and a
#: d=256 model on the current dialect's file (TQ2_0 everywhere)
TRAINED = {
    # 600 steps (about 45 s of one core): confident enough that int8-per-token (poppins),
    # per-block (llama.cpp) and float (transformers) activations pick the same greedy tokens;
    # at 150 steps only 78 % of the 370 prompts agree with transformers
    "example": dict(dim=64, layers=2, heads=4, steps=600, batch_size=8, lr=1e-2,
                    warmup_steps=20),
    "d256": dict(dim=256, layers=1, heads=4, steps=80, batch_size=4, lr=1.5e-2,
                 warmup_steps=10),
}


@functools.lru_cache(maxsize=None)
def trained(name: str) -> Path:
    """OUT folder of the model ``name`` of TRAINED (trained on first use)."""
    from poppins.bootstrap import bootstrap
    from poppins.training import train

    d = Path(tempfile.mkdtemp(prefix=f"poppins-export-{name}-"))
    atexit.register(shutil.rmtree, d, True)
    if name == "example":
        bootstrap(d / "src")
        xml = d / "src" / "train.xml"
    else:
        xml = DATA / "current" / "train.xml"
    with open(os.devnull, "w") as devnull:
        # augment=False: the export is compared on the file's own prompts, as written (what
        # augmentation adds is measured by eval, not here)
        train(xml, d / "out", overrides=dict(TRAINED[name], val_interval=1000,
                                             checkpoint_interval=1000, threads=1,
                                             augment=False),
              log=None, progress_stream=devnull)
    assert (d / "out" / "model.poppins").is_file()
    return d / "out"


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
    (64, None, None, True),      # rows of 64 (F16) and 256 (w_down: TQ2_0)
    (256, 2, 512, False),        # TQ2_0 everywhere, GQA, untied head
    (48, None, 200, True),       # rows of 48 and 200 -> F16
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


# ------------------------------------------------------------------ the command line
def _tiny_model_file(tmp_path, attention="mha") -> Path:
    from poppins.tokenizer import hf_json
    from poppins.training.export import export_model
    vocab = [s.encode() for s in SPECIAL_TOKENS] + [bytes([i]) for i in range(256)]
    added = [(s, i, True) for i, s in enumerate(SPECIAL_TOKENS)]
    obj = hf_json.build(vocab, added, [])
    cfg = ModelConfig(vocab_size=len(vocab), dim=64, layers=1, heads=4, context_length=32,
                      attention=attention)
    out = tmp_path / "out"
    out.mkdir()
    export_model(Model(cfg, seed=2, threads=1), out / "model.poppins",
                 tokenizer_json=json.dumps(obj), sources={}, default_system="Be brief.")
    return out


def test_cli_exports_both_formats(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from poppins.cli import main
    out = _tiny_model_file(tmp_path)
    assert main(["export", "-m", str(out), "--format", "gguf", "-o", str(tmp_path / "m.gguf")]) == 0
    assert "m.gguf" in capsys.readouterr().err
    r, g = _read(tmp_path / "m.gguf")
    assert "blk.0.ffn_down.weight" in g
    hf = tmp_path / "hf"
    assert main(["export", "-m", str(out / "model.poppins"), "--format", "hf", "-o", str(hf),
                 "--dtype", "bfloat16"]) == 0
    names = sorted(p.name for p in hf.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["architectures"] == ["ArceeForCausalLM"] and cfg["hidden_act"] == "relu2"
    tc = json.loads((hf / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == chat_template("Be brief.")
    from safetensors import safe_open
    from poppins.export import load_source
    from poppins.export.hf import hf_tensors
    want = hf_tensors(load_source(out))
    with safe_open(str(hf / "model.safetensors"), "np") as f:
        assert sorted(f.keys()) == sorted(want)


def test_cli_errors_are_messages(tmp_path, capsys):
    from poppins.cli import main
    assert main(["export", "-m", str(tmp_path / "none"), "--format", "gguf",
                 "-o", str(tmp_path / "m.gguf")]) == 2
    assert "no model file here" in capsys.readouterr().err
    out = _tiny_model_file(tmp_path, attention="mla")
    assert main(["export", "-m", str(out), "--format", "hf", "-o", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "MHA/GQA models only" in err and "Traceback" not in err


def test_gguf_without_tokenizer_has_a_loadable_placeholder_vocabulary(tmp_path):
    """Random-weight benchmark models: the vocabulary size is right and there is a merge
    (llama.cpp refuses a gpt2 vocabulary without merges)."""
    from poppins.export.gguf import write_gguf
    src = random_source()
    write_gguf(src, tmp_path / "m.gguf")
    r, _ = _read(tmp_path / "m.gguf")
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(toks) == src.config.vocab_size and len(set(toks)) == len(toks)
    assert r.fields["tokenizer.ggml.merges"].contents() == ["\u0120 \u0120"]
    assert "tokenizer.chat_template" not in r.fields

"""poppins.Tokenizer: training, round trips, special and requested tokens, files, Hugging Face
interop, fallback to the reference."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poppins import native
from poppins.errors import PoppinsError
from poppins.special_tokens import SPECIAL_IDS, SPECIAL_TOKENS
from poppins.tokenizer import Tokenizer, reference

REPO = Path(__file__).resolve().parent.parent
S = len(SPECIAL_TOKENS)

ALPHABET = ("abcdefXYZ éüß ΑΩαω Жж 日本中文 한국 ١٢٣ 0123 ²½ \t\n\r \u00a0\u3000\u2028"
            " .,;:!?'\"()<>/-_=+*&^%$#@~` 😀🏽\u0301")


def multiscript(seed: int, n: int, maxlen: int = 300):
    rng = random.Random(seed)
    words = ["the", "cat", "über", "naïve", "日本", "語", "Ελλάδα", "мир", "שלום", "١٢٣", "42",
             "don't", "WE'LL", "  ", "\n", "\t", "<html>", "</sample>", "<line-break />", "😀"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, maxlen // 4)):
            parts.append(rng.choice(words) if rng.random() < 0.6 else rng.choice(ALPHABET))
            if rng.random() < 0.5:
                parts.append(" ")
        out.append("".join(parts))
    return out


CORPUS = multiscript(1, 300)
# "Ġthe" is spelled like the tokenizer.json key of the bytes " the": that merge is never made
REQ = ["ROMEO", "über", "<b>", "x y", "Ġthe"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS + ["ROMEO and JULIET, ROMEOS, x y z"] * 3,
                           vocab_size=S + 5 + 256 + 700, min_frequency=0, requested_tokens=REQ)


@pytest.fixture(scope="module")
def shakes_tok(tinyshakespeare):
    return Tokenizer.train([tinyshakespeare], vocab_size=S + 256 + 2000, min_frequency=2,
                           requested_tokens=["ROMEO", "KING HENRY"])


def _with_reference(fn):
    old = os.environ.get("POPPINS_NO_EXT")
    os.environ["POPPINS_NO_EXT"] = "1"
    native.reset()
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["POPPINS_NO_EXT"]
        else:
            os.environ["POPPINS_NO_EXT"] = old
        native.reset()


# ---------------------------------------------------------------- layout and training

def test_layout(tok):
    assert tok.vocab_size == S + 5 + 256 + 700
    assert tok.special_tokens == SPECIAL_TOKENS and tok.special_ids == tuple(range(S))
    assert tok.requested_tokens == tuple(REQ) and tok.requested_ids == tuple(range(S, S + 5))
    assert tok.id_to_bytes(S + 5 + ord("a")) == b"a"
    assert tok.token_to_id("<html>") == SPECIAL_IDS["<html>"] == 17
    assert tok.token_to_id("ROMEO") == S
    assert tok.token_to_id("a") == S + 5 + ord("a")
    assert tok.id_to_token(S + 5 + ord(" ")) == "Ġ"
    assert tok.token_to_id("no such token") is None and tok.id_to_token(10 ** 6) is None


def test_forbidden_merge(tok):
    assert b" the" not in [tok.id_to_bytes(i) for i in range(tok.vocab_size)]
    assert len(tok.encode(" the the the", special=False)) == 6
    assert tok.encode("Ġthe").tolist() == [tok.token_to_id("Ġthe")]


def test_specials_never_merged(tok):
    for a, b in tok.merges:
        assert a >= S + 5 and b >= S + 5
    text = "<html>x</html> <sample><text>hi</text></sample>"
    ids = tok.encode(text, special=False)
    assert not set(ids.tolist()) & set(range(S))
    ids = tok.encode(text, special=True)
    assert ids[0] == SPECIAL_IDS["<html>"] and SPECIAL_IDS["</sample>"] in ids.tolist()


def test_requested_tokens_one_id(tok):
    for special in (True, False):
        for r in REQ:
            assert tok.encode(r, special).tolist() == [tok.token_to_id(r)]
            ids = tok.encode(f"zz{r}zz {r}!", special).tolist()
            assert ids.count(tok.token_to_id(r)) == 2
            assert tok.decode(tok.encode(f"zz{r}zz {r}!", special)) == f"zz{r}zz {r}!"


def test_vocab_full_and_min_frequency():
    texts = ["abababab cdcd efef"] * 2
    full = Tokenizer.train(texts, vocab_size=S + 256 + 2, min_frequency=0)
    assert full.num_merges == 2 and full.vocab_size == S + 256 + 2
    # with a high minimum frequency only pairs counted >= 10 merge: (a,b) x8, (b,a) x6 ...
    few = Tokenizer.train(texts, vocab_size=S + 256 + 100, min_frequency=8)
    assert few.merges == [(S + ord("a"), S + ord("b"))]
    none = Tokenizer.train(texts, vocab_size=S + 256 + 100, min_frequency=10 ** 6)
    assert none.num_merges == 0 and none.vocab_size == S + 256
    # min_frequency 0 and 1: until no pair is left
    a = Tokenizer.train(texts, vocab_size=S + 256 + 100, min_frequency=0)
    b = Tokenizer.train(texts, vocab_size=S + 256 + 100, min_frequency=1)
    assert a.merges == b.merges and a.num_merges < 100
    assert all(len(a.encode(w)) == 1 for w in ["abababab", " cdcd", " efef"])


def test_tie_break_documented_rule():
    # pieces 'ef', 'cd', 'ab', 'ac' (newlines are pieces of their own): 'ab', 'ac', 'cd',
    # 'ef' are tied at 2; the smallest left id wins, then the smallest right id
    t = Tokenizer.train(["ef\ncd\nac\nab"] * 2, vocab_size=S + 256 + 4, min_frequency=0)
    a, b, c, d, e, f = (S + ord(ch) for ch in "abcdef")
    assert t.merges == [(a, b), (a, c), (c, d), (e, f)]


def test_training_compiled_equals_reference(tinyshakespeare):
    texts = [tinyshakespeare[:120_000]] + CORPUS
    kw = dict(vocab_size=S + 2 + 256 + 900, min_frequency=0, requested_tokens=["ROMEO", "Ġthe"])
    ours = Tokenizer.train(texts, **kw)
    if ours.backend != "compiled":
        pytest.skip("compiled extension not built")
    ref = _with_reference(lambda: Tokenizer.train(texts, **kw))
    assert ours.merges == ref.merges and ours.to_json_str() == ref.to_json_str()


def test_backend_info_reports_bpe():
    info = native.backend_info()["extensions"]["bpe"]
    if info["backend"] != "compiled":
        pytest.skip("compiled extension not built")
    assert isinstance(info["openmp"], bool) and info["kernel"] == "c"
    assert _with_reference(lambda: native.backend_info()["extensions"]["bpe"]["backend"]) \
        == "reference"


def test_bad_arguments():
    with pytest.raises(PoppinsError, match="too small"):
        Tokenizer.train(["x"], vocab_size=100)
    with pytest.raises(PoppinsError, match="already a special"):
        Tokenizer.train(["x"], requested_tokens=["<html>"])
    with pytest.raises(PoppinsError, match="twice"):
        Tokenizer.train(["x"], requested_tokens=["ab", "ab"])
    with pytest.raises(PoppinsError, match="non-empty"):
        Tokenizer.train(["x"], requested_tokens=[""])
    with pytest.raises(PoppinsError, match="single byte-level"):
        Tokenizer.train(["x"], requested_tokens=["é"])
    with pytest.raises(PoppinsError, match="negative"):
        Tokenizer.train(["x"], min_frequency=-1)
    with pytest.raises(PoppinsError, match="must be str"):
        Tokenizer.train([b"x"])


# ---------------------------------------------------------------- round trips

@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_roundtrip_hypothesis(text, special):
    t = _ROUNDTRIP
    ids = t.encode(text, special)
    assert ids.dtype == np.uint32
    assert t.decode(ids) == text
    if not special:
        assert not set(ids.tolist()) & set(t.special_ids)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list(SPECIAL_TOKENS[:20]) + ["ROMEO", "a", " ", "<", ">", "é"]),
                max_size=30).map("".join), st.booleans())
def test_roundtrip_specials_dense(text, special):
    t = _ROUNDTRIP
    assert t.decode(t.encode(text, special)) == text


_ROUNDTRIP = Tokenizer.train(multiscript(2, 100), vocab_size=S + 1 + 256 + 400, min_frequency=0,
                             requested_tokens=["ROMEO"])


def test_lone_surrogate_is_an_error():
    t = _ROUNDTRIP
    with pytest.raises(PoppinsError, match="lone surrogate"):
        t.encode("a\ud800b")


# ---------------------------------------------------------------- threads, memmap, fallback

def test_batch_threads_and_memmap(tok, tmp_path):
    texts = multiscript(3, 60)
    one = tok.encode_batch(texts, threads=1)
    two = tok.encode_batch(texts, threads=2)
    five = tok.encode_batch(texts, special=False, threads=5)
    for t, a, b, c in zip(texts, one, two, five):
        assert a.tolist() == b.tolist() == tok.encode(t).tolist()
        assert c.tolist() == tok.encode(t, special=False).tolist()
    p = tmp_path / "text.txt"
    whole = "\n".join(texts)
    p.write_bytes(whole.encode("utf-8"))
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    assert tok.encode_bytes(mm).tolist() == tok.encode(whole).tolist()
    assert [a.tolist() for a in tok.encode_batch([mm[:100], mm[100:]], threads=2)] == \
        [tok.encode_bytes(mm[:100]).tolist(), tok.encode_bytes(mm[100:]).tolist()]


def test_reference_fallback_in_process(tok):
    text = "\n".join(multiscript(4, 30))
    want = tok.encode(text).tolist()

    def run():
        assert native.load("bpe") is None
        t2 = Tokenizer.from_json_str(tok.to_json_str())
        assert t2.backend == "reference"
        return t2.encode(text).tolist(), [a.tolist() for a in t2.encode_batch([text, "ROMEO"])]

    got, batch = _with_reference(run)
    assert got == want and batch[0] == want and batch[1] == [S]


_SUBPROC = r"""
import json, sys
{block}
import poppins
from poppins.tokenizer import Tokenizer
t = Tokenizer.train(["hello world, hello ROMEO <html> x"] * 3, vocab_size=125 + 1 + 256 + 20,
                    min_frequency=0, requested_tokens=["ROMEO"])
info = poppins.backend_info()["extensions"]["bpe"]
print(json.dumps({{"backend": info["backend"], "tok": t.backend, "merges": t.merges,
                   "ids": t.encode("hello ROMEO <html>!").tolist()}}))
"""


@pytest.mark.parametrize("mode", ["no_ext", "removed"])
def test_fallback_subprocess(mode, tok):
    block = "sys.modules['poppins._bpe'] = None" if mode == "removed" else ""
    env = dict(os.environ, POPPINS_NO_EXT="1" if mode == "no_ext" else "")
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", _SUBPROC.format(block=block)],
                         env=env, capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["backend"] == "reference" and got["tok"] == "reference"
    here = Tokenizer.train(["hello world, hello ROMEO <html> x"] * 3,
                           vocab_size=125 + 1 + 256 + 20, min_frequency=0,
                           requested_tokens=["ROMEO"])
    assert [list(m) for m in here.merges] == got["merges"]
    assert here.encode("hello ROMEO <html>!").tolist() == got["ids"]


# ---------------------------------------------------------------- files

def test_save_load_dir_and_file(tok, tmp_path):
    out = tok.save(tmp_path / "out")
    assert out == tmp_path / "out" / "tokenizer.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<sample>" and cfg["eos_token"] == "</sample>"
    assert cfg["unk_token"] == "<unknown>" and cfg["poppins"]["version"] == 1
    for path in (tmp_path / "out", out):
        t2 = Tokenizer.from_file(path)
        assert t2.merges == tok.merges and t2.to_json_str() == tok.to_json_str()
        text = "\n".join(CORPUS[:20]) + " ROMEO x y <html>"
        assert t2.encode(text).tolist() == tok.encode(text).tolist()
    single = tok.save(tmp_path / "model" / "tok.json")
    assert single.read_text(encoding="utf-8") == tok.to_json_str()
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["tok.json"]
    assert tok.to_json_str() == Tokenizer.from_json_str(tok.to_json_str()).to_json_str()


def test_load_errors(tmp_path):
    with pytest.raises(PoppinsError, match="cannot read"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PoppinsError, match=r"bad.json:1: not valid JSON"):
        Tokenizer.from_file(bad)
    bad.write_text(json.dumps({"version": "0.1.0", "model_type": "bpe"}))
    with pytest.raises(PoppinsError, match="version"):
        Tokenizer.from_file(bad)
    obj = json.loads(_ROUNDTRIP.to_json_str())
    obj["pre_tokenizer"] = {"type": "Whitespace"}
    bad.write_text(json.dumps(obj))
    with pytest.raises(PoppinsError, match="pre_tokenizer"):
        Tokenizer.from_file(bad)


# ---------------------------------------------------------------- Hugging Face interop

def _hf(tok, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    p = tok.save(tmp_path / "hf")
    return tokenizers.Tokenizer.from_file(str(p))


def test_hf_identical_multiscript(tok, tmp_path):
    hf = _hf(tok, tmp_path)
    texts = multiscript(7, 200) + ["zzROMEOzz x y <b>über<html></sample>", "q<html>x <b>"]
    for special in (True, False):
        hf.encode_special_tokens = not special
        for t in texts:
            assert hf.encode(t).ids == tok.encode(t, special).tolist(), (special, t)
    assert hf.get_vocab_size() == tok.vocab_size


def test_hf_identical_tinyshakespeare(shakes_tok, tinyshakespeare, tmp_path):
    hf = _hf(shakes_tok, tmp_path)
    ours = shakes_tok.encode(tinyshakespeare)
    assert hf.encode(tinyshakespeare).ids == ours.tolist()
    assert shakes_tok.decode(ours) == tinyshakespeare
    assert hf.decode(ours.tolist()) == tinyshakespeare


def test_reads_file_saved_by_hf(tok, tmp_path):
    hf = _hf(tok, tmp_path)
    hf.save(str(tmp_path / "resaved.json"))  # merges come back as pairs
    t2 = Tokenizer.from_file(tmp_path / "resaved.json")
    assert t2.merges == tok.merges and t2.to_json_str() == tok.to_json_str()


def test_transformers_loads(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tf")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tf"))
    text = "ROMEO über <html> the cat"
    assert fast(text)["input_ids"] == tok.encode(text).tolist()
    assert fast.bos_token == "<sample>" and fast.eos_token == "</sample>"


_OVL_TOK = Tokenizer.train(["abcd <html> cab été <h <b>"] * 3, vocab_size=125 + 6 + 256 + 30,
                           min_frequency=0, requested_tokens=["ab", "abc", "bcd", "l>x", "ca", "ét"],
                           special_tokens=list(SPECIAL_TOKENS) + ["<h"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "<", "h", "t", "m", "l", ">", "x", " ",
                                 "é", "\n", "<b>", "<html>"]), max_size=30).map("".join),
       st.booleans())
def test_hf_identical_overlapping_added_tokens(text, special):
    tokenizers = pytest.importorskip("tokenizers")
    hf = _OVL_HF.get("tok")
    if hf is None:
        hf = _OVL_HF["tok"] = tokenizers.Tokenizer.from_str(_OVL_TOK.to_json_str())
    hf.encode_special_tokens = not special
    assert hf.encode(text).ids == _OVL_TOK.encode(text, special).tolist()


_OVL_HF: dict = {}

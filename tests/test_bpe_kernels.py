"""The compiled BPE kernels (poppins._bpe) against their pure-Python twins (reference.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from poppins.tokenizer import reference, unicode_classes

bpe = pytest.importorskip("poppins._bpe", reason="compiled extension not built")

HANDMADE = [
    "", "a", " ", "\n", "Hello, world!", "I'm can't we'll they've she'd you're 'S 'ſa 'LL 'Re",
    "a  \n  b", "  leading and trailing  ", "x\t\ty", "\r\n\r\n", "tabs\t\n\tand\r\nCRLF  \n",
    "12345 ² 3³ Ⅻ ½ 1,000,000.50", "foo...bar!!!\n\n", "   !!!   ", " ?x", "\u00a0a\u3000b",
    "\u2028\u2028x\u0085y", "x\u200bb", "a\u180eb", "日本語のテキスト、そして中文。", "Ελληνικά κείμενο",
    "русский текст", "עברית", "العربية ١٢٣", "हिन्दी", "😀😀 👍🏽 family: 👨‍👩‍👧", "e\u0301 combining",
    "<html> <line-break /> </sample>", "'''", "'", "a'", "\x00\x01\x1c\x1f", "   \n", "word   ",
]

ALPHABET = ("abcXYZ éüß ΑΩαω Жж 日本中文 한국 ١٢٣ 0123 ²½ \t\n\r \u00a0\u3000\u2028"
            " .,;:!?'\"()<>/-_=+*&^%$#@~` 😀🏽\u0301\u200b")


def random_texts(seed: int, n: int, maxlen: int = 200):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, maxlen)))
            for _ in range(n)]


def regex_ends(text: str) -> list:
    pos, out = 0, []
    for piece in regex.findall(reference.PATTERN, text):
        pos += len(piece.encode("utf-8", "surrogatepass"))
        out.append(pos)
    return out


@pytest.mark.parametrize("text", HANDMADE)
def test_pretokenize_handmade(text):
    b = text.encode("utf-8")
    assert bpe.pretokenize(b).tolist() == reference.pretokenize(b).tolist() == regex_ends(text)


def test_pretokenize_random_multiscript():
    for text in random_texts(1, 300):
        b = text.encode("utf-8")
        assert bpe.pretokenize(b).tolist() == reference.pretokenize(b).tolist() == \
            regex_ends(text), text


# ---------------------------------------------------------------- the character classes
#
# Both pre-tokenizers read the classes of poppins/tokenizer/unicode_classes.py (the C one as
# ext/bpe/bpe_unicode_tables.h, rendered from it), so they agree on the whole code space
# whatever `regex` or Python Unicode database is installed.

#: Where the classes change: the ends of every run of the table and their neighbours, plus
#: the characters the pattern names.
EDGES = sorted({cp for first, last, _ in unicode_classes.RUNS
                for cp in (first - 1, first, last, last + 1) if 0 <= cp < 0x110000}
               | set(unicode_classes.FOLDS) | {ord(c) for c in "'sStTrReEvVmMlLdD\r\n \t"})
ANY_CHAR = st.one_of(st.integers(0, 0x10FFFF), st.sampled_from(EDGES)).map(chr)


@settings(max_examples=400, deadline=None)
@given(st.text(ANY_CHAR, max_size=40))
def test_pretokenize_hypothesis(text):
    """Any code point: unassigned, assigned only in a newer Unicode version, surrogates (as
    their ill-formed UTF-8 bytes), private use."""
    b = text.encode("utf-8", "surrogatepass")
    assert bpe.pretokenize(b).tolist() == reference.pretokenize(b).tolist()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_pretokenize_invalid_utf8(data):
    # ill-formed bytes are one "other" character each, as with surrogateescape
    assert bpe.pretokenize(data).tolist() == reference.pretokenize(data).tolist()


def test_pretokenize_every_code_point():
    """The compiled and the Python pre-tokenizer classify every code point alike."""
    cps = [chr(c) for c in range(0x110000)]
    for glue in ("", "a", " ", "1", "'", "\n"):
        b = glue.join(cps).encode("utf-8", "surrogatepass")
        assert np.array_equal(bpe.pretokenize(b), reference.pretokenize(b)), repr(glue)


def test_char_class_reads_the_table():
    starts = {first: c for first, _, c in unicode_classes.RUNS}
    for first, last, c in unicode_classes.RUNS:
        for cp in (first, (first + last) // 2, last):
            assert reference.char_class(cp) == c
        if last + 1 < 0x110000:  # the next run starts there, or an OTHER gap does
            assert reference.char_class(last + 1) == starts.get(last + 1, unicode_classes.OTHER)
    assert [reference.char_class(ord(c)) for c in "a1 !\u017f\U00010940"] == [1, 2, 3, 0, 1, 1]
    assert reference.char_class(0x10FFFF) == reference.char_class(0xD800) == 0


def test_reference_needs_no_regex_package():
    """The Python pre-tokenizer and tokenizer work with the regex package unavailable."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, sys; sys.modules['regex'] = None\n"
            "from poppins.tokenizer import Tokenizer, reference\n"
            "t = Tokenizer.train(['h\u00e9llo w\u00f6rld 12345 \u0661\u0662'] * 3,"
            " vocab_size=125 + 256 + 8, min_frequency=0)\n"
            "print(json.dumps([reference.pretokenize("
            "'it\u017fs \U00010940\U00010941 x'.encode()).tolist(),"
            " t.encode('h\u00e9llo').tolist()]))\n")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, POPPINS_NO_EXT="1",
               PYTHONPATH=os.pathsep.join([root] + [p for p in sys.path if p]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ends, ids = json.loads(res.stdout)
    assert ends == reference.pretokenize("it\u017fs \U00010940\U00010941 x".encode()).tolist()
    assert ends == [5, 14, 16] and len(ids) >= 1


def _regex_class(ch: str):
    """(class, contraction letter it folds onto) of a character under the installed regex."""
    k = next((v for pat, v in ((r"\p{L}", 1), (r"\p{N}", 2), (r"\s", 3))
              if regex.fullmatch(pat, ch)), 0)
    return k, next((c for c in "stremvld" if regex.fullmatch("(?i:%s)" % c, ch)), None)


_AGREES: dict = {}


def regex_agrees(ch: str) -> bool:
    """The installed regex classifies ch as the table does (true of every character outside
    the Unicode versions the two were made from)."""
    if ch not in _AGREES:
        cp = ord(ch)
        fold = unicode_classes.FOLDS.get(cp)
        if cp < 128 and ch.lower() in "stremvld":
            fold = ch.lower()
        _AGREES[ch] = _regex_class(ch) == (reference.char_class(cp), fold)
    return _AGREES[ch]


@settings(max_examples=300, deadline=None)
@given(st.text(ANY_CHAR.filter(lambda c: not 0xD800 <= ord(c) < 0xE000 and regex_agrees(c)),
               max_size=40))
def test_pretokenize_is_the_interop_pattern(text):
    """On characters the installed regex classifies as the table does, the split is that of
    PATTERN run by regex (the pattern string of tokenizer.json)."""
    b = text.encode("utf-8")
    assert reference.pretokenize(b).tolist() == regex_ends(text)


def test_pretokenize_tinyshakespeare(tinyshakespeare):
    b = tinyshakespeare.encode("utf-8")
    assert np.array_equal(bpe.pretokenize(b), reference.pretokenize(b))


def test_pretokenize_readonly_memmap(tmp_path):
    text = "".join(random_texts(2, 50))
    p = tmp_path / "t.txt"
    p.write_bytes(text.encode("utf-8"))
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    assert bpe.pretokenize(mm).tolist() == regex_ends(text)


# ---------------------------------------------------------------- word counting

ADDED = ([b"<html>", b"<sample>", b"tm", b"l>x", b"ROMEO", b"ROME"], [0, 1, 2, 3, 4, 5],
         [True, True, False, False, False, False])


def test_word_counter_matches_reference():
    texts = [t.encode() for t in random_texts(3, 200) + HANDMADE] + [
        b"q<html>x xhtmlx <html>x ROMEO ROMEOS ROME <sample>"]
    for threads in (1, 2, 3):
        c = bpe.WordCounter(*ADDED)
        c.add(texts[:100], threads)
        c.add(texts[100:], threads)
        r = reference.WordCounter(*ADDED)
        r.add(texts)
        w1, n1 = c.words()
        w2, n2 = r.words()
        assert w1 == w2 and n1.tolist() == n2.tolist()
    # requested tokens are cut out; a skipped special stays text (and hides "l>x" inside)
    words = dict(zip(*r.words()))
    assert b"ROMEO" not in words and b"ROME" not in words and b"<html" in words


# ---------------------------------------------------------------- training

def _train_both(texts, merges, min_freq, byte_base=7, forbidden=()):
    r = reference.WordCounter()
    r.add([t.encode("utf-8") for t in texts])
    words, counts = r.words()
    a = bpe.train_merges(words, counts, byte_base, merges, min_freq, forbidden)
    b = reference.train_merges(words, counts, byte_base, merges, min_freq, forbidden)
    return a, b


@pytest.mark.parametrize("min_freq", [0, 1, 2, 5])
def test_train_handmade(min_freq):
    texts = HANDMADE * 3 + ["aaaa aaa aa a abab ababab", "the cat the hat the bat"] * 4
    a, b = _train_both(texts, 300, min_freq)
    assert a.dtype == np.int32 and a.shape[1] == 2
    assert np.array_equal(a, b)
    assert len(a) > 10


def test_train_random_multiscript():
    a, b = _train_both(random_texts(4, 400, 300), 2000, 0)
    assert len(a) > 500 and np.array_equal(a, b)


def test_train_tinyshakespeare_slice(tinyshakespeare):
    a, b = _train_both([tinyshakespeare[:150_000]], 800, 0, byte_base=125)
    assert len(a) == 800 and np.array_equal(a, b)


def test_train_overlapping_runs():
    # overlapping repeats: counts are adjacent positions, replacement is left to right
    a, b = _train_both(["aaaaaaa", "aaaaa", "aaa", "bbbbbbbbb"], 20, 0, byte_base=0)
    assert np.array_equal(a, b)
    # (a, a) sits at 6 + 4 + 2 = 12 adjacent positions, (b, b) at 8
    assert a[0].tolist() == [ord("a"), ord("a")] and a[1].tolist() == [ord("b"), ord("b")]


def test_train_forbidden_merge_is_skipped():
    a, b = _train_both(["ab ab ab abc abc"], 10, 0, byte_base=0, forbidden=[b"ab"])
    assert np.array_equal(a, b)
    assert [ord("a"), ord("b")] not in a.tolist()


def test_tie_break_rule():
    """Tied counts: the smallest left id wins, then the smallest right id."""
    words = [b"xy", b"ba", b"ab", b"bc"]
    counts = np.array([3, 3, 3, 3], dtype=np.int64)
    # every pair has count 3: a tie the rule must break
    pair_counts = {}
    for w, c in zip(words, counts):
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + int(c)
    assert len(set(pair_counts.values())) == 1 and len(pair_counts) == 4
    for impl in (bpe, reference):
        m = impl.train_merges(words, counts, 0, 10, 0).tolist()
        assert m == [[ord("a"), ord("b")], [ord("b"), ord("a")], [ord("b"), ord("c")],
                     [ord("x"), ord("y")]]


# ---------------------------------------------------------------- encoding

def _encoders(texts, merges=600, added=ADDED):
    """A compiled and a reference encoder over the same vocabulary (byte ids after added)."""
    contents, ids, special = added
    base = len(contents)
    r = reference.WordCounter(contents, ids, special)
    r.add([t.encode("utf-8") for t in texts])
    words, counts = r.words()
    pairs = reference.train_merges(words, counts, base, merges, 0)
    vocab = list(contents) + [bytes([b]) for b in range(256)]
    m3 = []
    for a, b in pairs.tolist():
        m3.append((a, b, len(vocab)))
        vocab.append(vocab[a] + vocab[b])
    byte_ids = np.arange(base, base + 256, dtype=np.uint32)
    m3 = np.asarray(m3, dtype=np.uint32).reshape(-1, 3)
    return (bpe.Encoder(vocab, byte_ids, m3, contents, ids, special),
            reference.Encoder(vocab, byte_ids, m3, contents, ids, special))


TEXTS = random_texts(5, 300, 400) + HANDMADE + [
    "q<html>x xhtmlx <html>x ROMEO ROMEOS ROME <sample>", "a" * 1000, "ab" * 700,
    "".join(random.Random(6).choice("abc") for _ in range(1500)), " " * 300 + "x",
    "1" * 257, "é" * 255, "x" * 17 + "y" * 7]


def test_encoder_matches_reference():
    c, r = _encoders(TEXTS)
    for special in (True, False):
        for t in TEXTS:
            b = t.encode("utf-8")
            got, want = c.encode(b, special), r.encode(b, special)
            assert got.dtype == np.uint32 and got.tolist() == want.tolist(), t[:50]
            assert c.decode(got) == b


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_encoder_arbitrary_bytes(data):
    c, r = ENC
    assert c.encode(data, True).tolist() == r.encode(data, True).tolist()
    assert c.decode(c.encode(data, False)) == data


ENC = _encoders(TEXTS[:100])


@pytest.mark.parametrize("threads", [1, 2, 7])
def test_encode_batch_threads(threads):
    c, r = ENC
    data = [t.encode("utf-8") for t in TEXTS]
    one = c.encode_batch(data, True, 1)
    many = c.encode_batch(data, True, threads)
    assert len(many) == len(data)
    for a, b, t in zip(one, many, data):
        assert a.tolist() == b.tolist() == c.encode(t, True).tolist()
    assert c.encode_batch([], True, threads) == []


def test_encode_readonly_memmap(tmp_path):
    c, r = ENC
    text = "\n".join(TEXTS).encode("utf-8")
    p = tmp_path / "t.bin"
    p.write_bytes(text)
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    assert not mm.flags.writeable
    assert c.encode(mm, False).tolist() == c.encode(text, False).tolist() \
        == r.encode(text, False).tolist()


def test_decode_rejects_unknown_ids():
    c, r = ENC
    for enc in (c, r):
        with pytest.raises(IndexError):
            enc.decode(np.array([10 ** 6]))
        with pytest.raises(IndexError):
            enc.decode(np.array([-1]))


def test_build_info():
    info = bpe.build_info()
    assert isinstance(info["openmp"], bool)
    assert reference.build_info()["openmp"] is False


OVERLAP = ([b"ab", b"abc", b"bcd", b"<html>", b"<h", b"l>x", b"c", b"\xc3\xa9t"],
           [0, 1, 2, 3, 4, 5, 6, 7], [False, False, False, True, True, False, False, False])
OVL = _encoders(["abcd <html> cab été"] * 3, merges=40, added=OVERLAP)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "<", "h", "t", "m", "l", ">", "x", " ",
                                 "é", "\n"]), max_size=40).map("".join), st.booleans())
def test_added_tokens_overlapping(text, special):
    """Leftmost-longest matching with prefixes and overlaps; skipped specials stay text."""
    c, r = OVL
    b = text.encode("utf-8")
    got = c.encode(b, special)
    assert got.tolist() == r.encode(b, special).tolist()
    assert c.decode(got) == b
    w = reference.WordCounter(*OVERLAP)
    w.add([b])
    k = bpe.WordCounter(*OVERLAP)
    k.add([b])
    assert w.words()[0] == k.words()[0]


def test_unicode_tables_are_regenerated_identically():
    """unicode_classes.py and bpe_unicode_tables.h are what the generator renders from the
    committed classes (no dependence on the installed regex)."""
    import runpy
    from pathlib import Path

    gen = Path(__file__).resolve().parent.parent / "ext" / "bpe" / "gen_unicode_tables.py"
    if not gen.is_file():
        pytest.skip("ext/bpe sources are not present")
    mod = runpy.run_path(str(gen))
    files = mod["renderings"](*mod["load"]())
    assert sorted(p.name for p in files) == ["bpe_unicode_tables.h", "unicode_classes.py"]
    for path, text in files.items():
        assert path.read_text() == text, path
    assert mod["main"](["--check"]) == 0

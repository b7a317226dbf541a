"""Readable pure-Python twin of the compiled ``poppins._bpe`` module (same names, same
signatures, same results to the id).  Used when the extension is missing or
``POPPINS_NO_EXT=1``; the tests compare the two.

* ``pretokenize(data)``: end byte offsets of the GPT-4 pattern's pieces of a UTF-8 buffer
  (ill-formed bytes count as one "other" character each, as with ``surrogateescape``).  The
  character classes are the generated ones of :mod:`.unicode_classes`, which the compiled
  pre-tokenizer reads too, never those of the installed ``regex`` package or Python.
* ``WordCounter``: unique pre-token words with counts.  Added tokens are cut out first the way
  ``encode(special=False)`` does it: requested tokens split the text, special-token strings
  stay text (and, as in Hugging Face tokenizers, a skipped special-token match is not searched
  again for a requested token inside it).
* ``train_merges``: the merge loop.  The pair count is the number of adjacent positions
  holding the pair, summed over words weighted by their counts.  Each step merges the best
  pair: **highest count; on equal counts the smallest left id, then the smallest right id**
  (ids of bytes follow byte values, merged tokens follow merge order).  Occurrences are
  replaced left to right without overlap (``aaa`` -> ``aa a``).  Training stops when the best
  count is below ``min_frequency`` (or no pair is left) or after ``max_merges`` merges.  A pair
  whose bytes equal a string of ``forbidden`` is never merged (requested-token guard).
* ``Encoder``: added tokens (leftmost-longest), then the pre-tokenizer, then BPE by rank
  inside each piece (the lowest-rank pair first, leftmost among equals), which reproduces the
  training segmentation and Hugging Face's BPE model.
"""
from __future__ import annotations

import heapq
import re
from bisect import bisect_right
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from . import unicode_classes as uc

#: The GPT-4 (cl100k) split pattern, as written for ``regex``-style engines: the pattern of
#: tokenizer.json (Hugging Face interop).  Its classes \p{L}, \p{N}, \s are those of
#: :mod:`.unicode_classes` here; a peer running the string uses its own Unicode version.
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_info() -> dict:
    return {"openmp": False, "kernel": "python", "pretokenizer": "gpt4-python"}


def _as_bytes(data) -> bytes:
    return data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))


# ---------------------------------------------------------------- pre-tokenizer
#
# The pattern only asks of a character its class (letter, number, white space, other) and
# whether it is one of  '  \r  \n  space  or a contraction letter (s t r e v m l d in either
# case, or a non-ASCII character folding onto one).  So each non-ASCII character is replaced
# by an ASCII stand-in that answers the same (a letter by "A", a number by "0", white space
# by "\t", anything else by "\x00"; "\u017f" by "s"), and PATTERN, with its classes spelled
# as the ASCII members of the table's classes, runs on that with the standard ``re``: one
# code point in, one out, so the pieces have the same extent in both strings.

_STARTS = [run[0] for run in uc.RUNS]


def char_class(cp: int) -> int:
    """Class of a code point: uc.LETTER, uc.NUMBER, uc.SPACE or uc.OTHER."""
    k = bisect_right(_STARTS, cp) - 1
    return uc.RUNS[k][2] if k >= 0 and cp <= uc.RUNS[k][1] else uc.OTHER


_ASCII = {k: "".join(chr(c) for c in range(128) if char_class(c) == k)
          for k in (uc.LETTER, uc.NUMBER, uc.SPACE, uc.OTHER)}
_L, _N, _S = (re.escape(_ASCII[k]) for k in (uc.LETTER, uc.NUMBER, uc.SPACE))
_SPLIT = re.compile(                                      # PATTERN, alternative by alternative:
    "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"  # (?i:'s|'t|'re|'ve|'m|'ll|'d)
    f"|[^\r\n{_L}{_N}]?[{_L}]+"                           # [^\r\n\p{L}\p{N}]?\p{L}+
    f"|[{_N}]{{1,3}}"                                     # \p{N}{1,3}
    f"| ?[^{_S}{_L}{_N}]+[\r\n]*"                         # (space)?[^\s\p{L}\p{N}]+[\r\n]*
    f"|[{_S}]*[\r\n]+"                                    # \s*[\r\n]+
    f"|[{_S}]+(?![^{_S}])"                                # \s+(?!\S)
    f"|[{_S}]+")                                          # \s+
_CONTRACTION_LETTERS = "stremvldSTREMVLD"
_STAND_IN = {
    uc.LETTER: next(c for c in _ASCII[uc.LETTER] if c not in _CONTRACTION_LETTERS),
    uc.NUMBER: _ASCII[uc.NUMBER][0],
    uc.SPACE: next(c for c in _ASCII[uc.SPACE] if c not in "\r\n "),
    uc.OTHER: next(c for c in _ASCII[uc.OTHER] if c != "'"),
}


class _StandIns(dict):
    """``str.translate`` table: code point -> ASCII stand-in, filled on first use."""

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            out = chr(cp)
        else:
            out = uc.FOLDS.get(cp) or _STAND_IN[char_class(cp)]
        self[cp] = out
        return out


_STAND_INS = _StandIns()


def pretokenize(data) -> np.ndarray:
    """End offsets (int64) of the pre-tokens of a UTF-8 buffer."""
    text = _as_bytes(data).decode("utf-8", "surrogateescape")
    if text.isascii():  # one byte per character
        return np.cumsum(np.fromiter(map(len, _SPLIT.findall(text)), dtype=np.int64))
    pieces = _SPLIT.findall(text.translate(_STAND_INS))  # they tile the text
    char_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64))
    # UTF-8 length of each character; a surrogate U+DC80..U+DCFF is one ill-formed byte
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    width = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    width[(cps >= 0xDC80) & (cps <= 0xDCFF)] = 1
    return np.cumsum(width)[char_ends - 1]


def _pieces(data: bytes) -> List[bytes]:
    ends = pretokenize(data)
    starts = [0] + ends[:-1].tolist()
    return [data[s:e] for s, e in zip(starts, ends.tolist())]


class _Added:
    """Leftmost-longest matching of added tokens (a regex alternation, longest first)."""

    def __init__(self, contents: Sequence[bytes], ids: Sequence[int], specials: Sequence[bool]):
        order = sorted(range(len(contents)), key=lambda k: (-len(contents[k]), k))
        self.by_content: Dict[bytes, Tuple[int, bool]] = {}
        for k in sorted(range(len(contents))):  # a duplicate content keeps the first
            self.by_content.setdefault(bytes(contents[k]), (int(ids[k]), bool(specials[k])))
        alts = [re.escape(bytes(contents[k])) for k in order if contents[k]]
        self.pattern = re.compile(b"|".join(alts)) if alts else None

    def segments(self, data: bytes, use_special: bool):
        """Yield (text_bytes, None) and (b"", id) items in order."""
        pos = 0
        if self.pattern is not None:
            for m in self.pattern.finditer(data):
                tid, special = self.by_content[m.group()]
                if special and not use_special:
                    continue  # stays text; the search resumes after it
                if m.start() > pos:
                    yield data[pos:m.start()], None
                yield b"", tid
                pos = m.end()
        if pos < len(data):
            yield data[pos:], None


class WordCounter:
    """Counts the pre-token words of texts (UTF-8 bytes); see the module docstring."""

    def __init__(self, added_contents=(), added_ids=(), added_special=()):
        self.added = _Added(list(added_contents), list(added_ids), list(added_special))
        self.counts: Dict[bytes, int] = {}

    def add(self, texts: Iterable[bytes], threads: int = 1) -> None:
        for text in texts:
            for seg, tid in self.added.segments(_as_bytes(text), False):
                if tid is None:
                    for w in _pieces(seg):
                        self.counts[w] = self.counts.get(w, 0) + 1

    def words(self) -> Tuple[List[bytes], np.ndarray]:
        words = sorted(self.counts)
        return words, np.asarray([self.counts[w] for w in words], dtype=np.int64)


def train_merges(words: Sequence[bytes], counts, byte_base: int, max_merges: int,
                 min_frequency: int, forbidden: Sequence[bytes] = ()) -> np.ndarray:
    """The merge loop; returns int32 (n, 2) pairs of ids in merge (rank) order."""
    counts = np.asarray(counts, dtype=np.int64)
    seqs = [[byte_base + b for b in w] for w in words]
    tok_bytes = {byte_base + b: bytes([b]) for b in range(256)}
    forbidden = set(bytes(f) for f in forbidden)
    pair_count: Dict[Tuple[int, int], int] = {}
    where: Dict[Tuple[int, int], set] = {}

    def add(pair, delta, w):
        pair_count[pair] = pair_count.get(pair, 0) + delta
        if delta > 0:
            where.setdefault(pair, set()).add(w)

    for w, s in enumerate(seqs):
        for pair in zip(s, s[1:]):
            add(pair, int(counts[w]), w)
    # max-heap with lazy deletion: entries (-count, a, b); a stale entry is re-pushed
    heap = [(-c, a, b) for (a, b), c in pair_count.items() if c > 0]
    heapq.heapify(heap)
    merges: List[Tuple[int, int]] = []
    blocked = set()
    while len(merges) < max_merges and heap:
        negc, a, b = heapq.heappop(heap)
        actual = pair_count[(a, b)]
        if actual != -negc:
            if 0 < actual < -negc:
                heapq.heappush(heap, (-actual, a, b))
            continue
        if actual <= 0 or actual < min_frequency:
            break
        if (a, b) in blocked:
            continue
        new_bytes = tok_bytes[a] + tok_bytes[b]
        if new_bytes in forbidden:
            blocked.add((a, b))
            continue
        new = byte_base + 256 + len(merges)
        tok_bytes[new] = new_bytes
        merges.append((a, b))
        touched = set()
        for w in sorted(where.get((a, b), ())):
            s, c, out, i = seqs[w], int(counts[w]), [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    if out:
                        add((out[-1], a), -c, w)
                        add((out[-1], new), c, w)
                        touched.add((out[-1], new))
                    if i + 2 < len(s):
                        add((b, s[i + 2]), -c, w)
                        add((new, s[i + 2]), c, w)
                        touched.add((new, s[i + 2]))
                    pair_count[(a, b)] -= c
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
        for pair in sorted(touched):
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], pair[0], pair[1]))
    return np.asarray(merges, dtype=np.int32).reshape(-1, 2)


class Encoder:
    """Rank-ordered BPE encoder; same constructor as the compiled one."""

    def __init__(self, token_bytes, byte_ids, merges, added_contents=(), added_ids=(),
                 added_special=()):
        self.token_bytes = [bytes(t) for t in token_bytes]
        self.byte_ids = [int(i) for i in np.asarray(byte_ids).reshape(-1)]
        if len(self.byte_ids) != 256:
            raise ValueError("byte_ids must have 256 entries")
        self.ranks: Dict[Tuple[int, int], Tuple[int, int]] = {}
        for r, (a, b, new) in enumerate(np.asarray(merges, dtype=np.int64).reshape(-1, 3).tolist()):
            self.ranks.setdefault((a, b), (r, new))
        self.added = _Added(list(added_contents), list(added_ids), list(added_special))

    def _bpe(self, word: bytes) -> List[int]:
        ids = [self.byte_ids[b] for b in word]
        while len(ids) > 1:
            best = None
            for i in range(len(ids) - 1):
                r = self.ranks.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r[0] < best[0]):
                    best = (r[0], i, r[1])
            if best is None:
                break
            _, i, new = best
            ids[i:i + 2] = [new]
        return ids

    def encode(self, data, special: bool = True) -> np.ndarray:
        out: List[int] = []
        cache: Dict[bytes, List[int]] = {}
        for seg, tid in self.added.segments(_as_bytes(data), bool(special)):
            if tid is not None:
                out.append(tid)
                continue
            for w in _pieces(seg):
                ids = cache.get(w)
                if ids is None:
                    ids = cache[w] = self._bpe(w)
                out.extend(ids)
        return np.asarray(out, dtype=np.uint32)

    def encode_batch(self, texts, special: bool = True, threads: int = 1) -> List[np.ndarray]:
        return [self.encode(t, special) for t in texts]

    def decode(self, ids) -> bytes:
        n = len(self.token_bytes)
        parts = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= i < n:
                raise IndexError(f"token id {i} is out of range (vocabulary of {n})")
            parts.append(self.token_bytes[i])
        return b"".join(parts)

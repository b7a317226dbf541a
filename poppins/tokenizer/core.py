"""``poppins.Tokenizer``: byte-level BPE with a GPT-4-style pre-tokenizer, usable on any text.

    tok = Tokenizer.train(texts, vocab_size=8192, min_frequency=3)
    ids = tok.encode("Hello <html> world")          # uint32 array; "<html>" is one id
    tok.decode(ids) == "Hello <html> world"
    tok.save("out/")                                # out/tokenizer.json + tokenizer_config.json
    tok = Tokenizer.from_file("out/")               # or the tokenizer.json path itself

Ids: the special tokens first (ids 0..S-1, default the 125 of poppins.special_tokens), then
the requested tokens, then the 256 bytes (byte b has id S + R + b), then one id per merge in
merge order.  ``vocab_size`` counts them all.

Training: texts are cut at requested tokens (special-token strings in training text stay
text), split with the GPT-4 pattern, and the unique pieces are merged bottom-up.  Each step
merges the pair with the **highest count; on equal counts the smallest left id, then the
smallest right id** (a count is the number of adjacent positions holding the pair, over all
pieces weighted by their frequency).  Training stops when the best count is below
``min_frequency`` (0 or 1: until no pair is left) or when the vocabulary is full; when it
stops early, ``tok.vocab_size`` is the smaller, actual number of ids.
Encoding applies merges by rank within each piece, which gives the training segmentation
and exactly the ids Hugging Face ``tokenizers`` gives on our tokenizer.json.

Special-token matching (``special=True``, the default like Hugging Face) turns the special
tokens' strings in the text into their ids; with ``special=False`` (the corpus writer) they
stay text.  Requested tokens are always one id wherever they occur; as in Hugging Face
tokenizers, the one exception is an occurrence overlapping a special-token string that
``special=False`` leaves as text.  Added tokens are matched leftmost-longest.

Character classes (letters, numbers, white space) come from the ``regex`` module (tables
generated into ext/bpe/bpe_unicode_tables.h).  Hugging Face ``tokenizers`` (Oniguruma) knows
an older Unicode version: around the ~4,700 code points assigned in the newest versions
(e.g. U+088F, the Garay and Tulu-Tigalari scripts) its split, and so its ids, can differ.
On every other text the ids are identical.

``decode`` joins the tokens' bytes and decodes UTF-8 with ``errors="replace"`` (like Hugging
Face): ``decode(encode(s)) == s`` for every ``str``; a lone surrogate is not Unicode text and
``encode`` refuses it with a PoppinsError.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import native
from ..errors import PoppinsError
from ..fileio import atomic_write_text
from ..special_tokens import SPECIAL_TOKENS
from ..threads import resolve_threads
from . import hf_json, reference

#: Texts are handed to the word counter in chunks of about this many bytes.
_CHUNK_BYTES = 8 << 20


def _impl():
    """The compiled module, or the pure-Python reference."""
    mod = native.load("bpe")
    return mod if mod is not None else reference


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _check_tokens(name: str, tokens: Sequence[str]) -> List[str]:
    out, seen = [], set()
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise PoppinsError(f"{name}: {t!r} is not a non-empty string")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise PoppinsError(f"{name}: {t!r} is not valid Unicode text") from None
        if t in seen:
            raise PoppinsError(f"{name}: {t!r} is listed twice")
        seen.add(t)
        out.append(t)
    return out


class Tokenizer:
    """Byte-level BPE tokenizer (see the module docstring for ids, tie-break and files)."""

    def __init__(self, vocab_bytes: Sequence[bytes], added: Sequence[Tuple[str, int, bool]],
                 merges: Sequence[Tuple[int, int, int]]):
        self._vocab: List[bytes] = [bytes(b) for b in vocab_bytes]
        self._added: List[Tuple[str, int, bool]] = sorted(
            ((str(c), int(i), bool(s)) for c, i, s in added), key=lambda t: t[1])
        self._merges = np.asarray(merges, dtype=np.int64).reshape(-1, 3)
        added_ids = {i for _, i, _ in self._added}
        byte_ids = {}
        for i, b in enumerate(self._vocab):
            if len(b) == 1 and i not in added_ids and b[0] not in byte_ids:
                byte_ids[b[0]] = i
        if len(byte_ids) != 256:
            raise PoppinsError("tokenizer: the vocabulary lacks some of the 256 byte tokens")
        self._byte_ids = np.asarray([byte_ids[b] for b in range(256)], dtype=np.uint32)
        self._content_to_id: Dict[str, int] = {c: i for c, i, _ in self._added}
        self._key_to_id: Optional[Dict[str, int]] = None
        self._enc = None
        self._enc_impl = None

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 3,
              special_tokens: Sequence[str] = SPECIAL_TOKENS,
              requested_tokens: Sequence[str] = (), threads: Optional[int] = None
              ) -> "Tokenizer":
        """Train on texts (any iterable of str, streamed in chunks).

        vocab_size: total ids (specials + requested + 256 bytes + merges); min_frequency:
        stop when the best pair count is below it; threads: for counting the pre-token words
        (None: poppins.threads.default_threads()); the merge loop is sequential.  Raises
        PoppinsError for unusable arguments.  See the module docstring for the tie-break."""
        specials = _check_tokens("special token", special_tokens)
        requested = _check_tokens("requested token", requested_tokens)
        clash = set(specials) & set(requested)
        if clash:
            raise PoppinsError(f"requested token {sorted(clash)[0]!r} is already a special token")
        for t in specials + requested:
            if t in hf_json.CHAR_TO_BYTE:
                raise PoppinsError(
                    f"added token {t!r} is a single byte-level character; it would share its "
                    "tokenizer.json entry with a byte token")
        try:
            vocab_size = int(vocab_size)
            min_frequency = int(min_frequency)
        except (TypeError, ValueError):
            raise PoppinsError("vocab_size and min_frequency must be integers") from None
        S, R = len(specials), len(requested)
        base = S + R + 256
        if vocab_size < base:
            raise PoppinsError(f"vocab_size {vocab_size} is too small: the {S} special tokens, "
                               f"{R} requested tokens and 256 bytes need {base}")
        if min_frequency < 0:
            raise PoppinsError(f"min_frequency {min_frequency} is negative")
        nthreads = resolve_threads(threads)
        impl = _impl()
        contents = [_utf8(t) for t in specials + requested]
        ids = list(range(S + R))
        flags = [True] * S + [False] * R
        counter = impl.WordCounter(contents, ids, flags)
        chunk, size = [], 0
        for t in texts:
            if not isinstance(t, str):
                raise PoppinsError(f"training text must be str, not {type(t).__name__}")
            b = _utf8(t)
            chunk.append(b)
            size += len(b)
            if size >= _CHUNK_BYTES or len(chunk) >= 65536:
                counter.add(chunk, nthreads)
                chunk, size = [], 0
        if chunk:
            counter.add(chunk, nthreads)
        words, counts = counter.words()
        # a merge must not create a token whose tokenizer.json key is an added token's content
        forbidden = [b for b in (hf_json.from_byte_level(t) for t in specials + requested)
                     if b is not None]
        pairs = impl.train_merges(words, counts, S + R, vocab_size - base, min_frequency,
                                  forbidden)
        vocab = [_utf8(t) for t in specials + requested] + [bytes([b]) for b in range(256)]
        merges = []
        for a, b in np.asarray(pairs).tolist():
            merges.append((a, b, len(vocab)))
            vocab.append(vocab[a] + vocab[b])
        added = [(t, i, i < S) for i, t in enumerate(specials + requested)]
        return cls(vocab, added, merges)

    # ------------------------------------------------------------------ encoding
    def _encoder(self):
        impl = _impl()
        if self._enc is None or self._enc_impl is not impl:
            self._enc = impl.Encoder(self._vocab, self._byte_ids, self._merges.astype(np.uint32),
                                     [_utf8(c) for c, _, _ in self._added],
                                     [i for _, i, _ in self._added],
                                     [s for _, _, s in self._added])
            self._enc_impl = impl
        return self._enc

    def encode(self, text: str, special: bool = True) -> np.ndarray:
        """uint32 ids of text.  special=False: special-token strings stay plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__} (see encode_bytes)")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PoppinsError(f"text to encode: a lone surrogate {text[exc.start]!r} at "
                               f"character {exc.start} is not valid Unicode text") from None
        return self._encoder().encode(data, bool(special))

    def encode_bytes(self, data, special: bool = True) -> np.ndarray:
        """uint32 ids of UTF-8 data: bytes or any buffer, read-only memmaps included."""
        return self._encoder().encode(data, bool(special))

    def encode_batch(self, texts: Iterable[str], special: bool = True,
                     threads: Optional[int] = None) -> List[np.ndarray]:
        """encode() of each text, on all cores by default (the GIL is released)."""
        data = []
        for t in texts:
            if isinstance(t, str):
                data.append(_utf8(t))
            else:
                data.append(bytes(memoryview(t).cast("B")))
        return self._encoder().encode_batch(data, bool(special), resolve_threads(threads))

    def decode(self, ids, errors: str = "replace") -> str:
        """The text of ids (special tokens included as their strings)."""
        return self.decode_bytes(ids).decode("utf-8", errors)

    def decode_bytes(self, ids) -> bytes:
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError("decode() takes integer ids")
        return self._encoder().decode(arr.astype(np.int64, copy=False).reshape(-1))

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __len__(self) -> int:
        return len(self._vocab)

    @property
    def special_tokens(self) -> Tuple[str, ...]:
        return tuple(c for c, _, s in self._added if s)

    @property
    def special_ids(self) -> Tuple[int, ...]:
        return tuple(i for _, i, s in self._added if s)

    @property
    def requested_tokens(self) -> Tuple[str, ...]:
        return tuple(c for c, _, s in self._added if not s)

    @property
    def requested_ids(self) -> Tuple[int, ...]:
        return tuple(i for _, i, s in self._added if not s)

    @property
    def merges(self) -> List[Tuple[int, int]]:
        """(left id, right id) per merge, in rank order."""
        return [(int(a), int(b)) for a, b, _ in self._merges.tolist()]

    @property
    def num_merges(self) -> int:
        return int(self._merges.shape[0])

    def _keys(self) -> Dict[str, int]:
        if self._key_to_id is None:
            self._key_to_id = dict(hf_json.build(self._vocab, self._added, [])["model"]["vocab"])
        return self._key_to_id

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of an added token's content or of a tokenizer.json vocabulary key
        (byte-level spelling, e.g. ``"Ġthe"``), like Hugging Face; None if unknown."""
        if token in self._content_to_id:
            return self._content_to_id[token]
        return self._keys().get(token)

    def id_to_token(self, i: int) -> Optional[str]:
        """The tokenizer.json spelling of id i (added tokens: their content)."""
        if not 0 <= int(i) < len(self._vocab):
            return None
        for c, tid, _ in self._added:
            if tid == i:
                return c
        return hf_json.to_byte_level(self._vocab[int(i)])

    def id_to_bytes(self, i: int) -> bytes:
        return self._vocab[int(i)]

    @property
    def backend(self) -> str:
        return "compiled" if _impl() is not reference else "reference"

    # ------------------------------------------------------------------ files
    def to_json_obj(self) -> dict:
        return hf_json.build(self._vocab, self._added, [(a, b) for a, b, _ in self._merges.tolist()])

    def to_json_str(self) -> str:
        """tokenizer.json as a string (deterministic: same tokenizer, same text)."""
        return hf_json.dumps(self.to_json_obj())

    def config_json_str(self) -> str:
        return hf_json.dumps(hf_json.config(list(self.special_tokens), list(self.requested_tokens)))

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write atomically.  A path ending in ``.json`` gets tokenizer.json's content and
        nothing else; any other path is a directory that receives tokenizer.json and
        tokenizer_config.json.  Returns the tokenizer.json path."""
        p = Path(path)
        if p.suffix == ".json":
            atomic_write_text(p, self.to_json_str())
            return p
        p.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p / "tokenizer.json", self.to_json_str())
        atomic_write_text(p / "tokenizer_config.json", self.config_json_str())
        return p / "tokenizer.json"

    @classmethod
    def from_json_str(cls, text: str, where: str = "tokenizer.json") -> "Tokenizer":
        vocab, added, merges = hf_json.parse(hf_json.loads(text, where), where)
        return cls(vocab, added, merges)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """Load tokenizer.json (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PoppinsError(f"{p}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise PoppinsError(f"{p}: not UTF-8 text (byte {exc.start})") from None
        return cls.from_json_str(text, str(p))

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={self.num_merges}, "
                f"special={len(self.special_ids)}, requested={len(self.requested_ids)}, "
                f"backend={self.backend})")

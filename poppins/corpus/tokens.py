"""Token streams of samples, and the ``*_corpus.bin`` / ``*_index.bin`` files.

One sample is the stream::

    <sample> [<system> S </system>] <prompt> <text> P </text> </prompt> [<thought> T </thought>]
    <ai> items </ai> </sample>

(a conversation repeats ``<prompt>`` ... ``</ai>`` once per turn before ``</sample>``)

This module is the one definition of that layout: the training streams (``encode_samples``),
the prompt a model continues (``prompt_ids``), a conversation replayed at inference
(``conversation_ids``, used by poppins.api for the CLI and the server) and the ids that end an
answer (``STOP_IDS``) are all built from the part helpers below (``system_part``,
``prompt_part``, ``text_part``, ``answer_text_part``).

where an item is ``<text>`` T ``</text>``, ``<source>`` ID ``</source>`` (ID: the one token of
``source_token``), a line-break token, or a
code block whose opening tag keeps its inline/indent variant.  Tags are inserted as special-
token ids here; text pieces are encoded with special-token matching off, so user text that
contains ``<html>`` or ``</sample>`` never becomes a structural token (requested tokens are
still one id wherever they occur).

Files (no header, little-endian, as in the original; manifest.json records the versions):

* ``*_corpus.bin``: token ids, u32.
* ``*_index.bin``: per sample three u64: byte offset of the sample in the corpus file, token
  count, and the position (relative to the sample start) of the first token the model must
  learn to produce: the first token after ``</prompt>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import PoppinsError
from ..special_tokens import CODE_LANGS, LINE_BREAK, LINE_BREAK_2, SPECIAL_IDS, SPECIAL_TOKENS, \
    code_close, code_open

CORPUS_FORMAT_VERSION = 1
INDEX_FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u4")
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("count", "<u8"), ("boundary", "<u8")])
assert INDEX_DTYPE.itemsize == 24

_S = SPECIAL_IDS
SAMPLE, END_SAMPLE = _S["<sample>"], _S["</sample>"]
AI, END_AI = _S["<ai>"], _S["</ai>"]
SOURCE, END_SOURCE = _S["<source>"], _S["</source>"]
PROMPT, END_PROMPT = _S["<prompt>"], _S["</prompt>"]
SYSTEM, END_SYSTEM = _S["<system>"], _S["</system>"]
TEXT, END_TEXT = _S["<text>"], _S["</text>"]
THOUGHT, END_THOUGHT = _S["<thought>"], _S["</thought>"]
#: the ids that end an answer: ``</ai>`` (the turn is answered) and ``</sample>``
STOP_IDS = (END_AI, END_SAMPLE)
_CODE_OPEN = np.zeros(len(SPECIAL_TOKENS), dtype=bool)
_CODE_CLOSE = np.zeros(len(SPECIAL_TOKENS), dtype=bool)
for _lang in CODE_LANGS:
    _CODE_CLOSE[_S[code_close(_lang)]] = True
    _CODE_OPEN[_S[code_open(_lang)]] = True
    _CODE_OPEN[_S[code_open(_lang, inline=True)]] = True
    for _i in range(1, 7):
        _CODE_OPEN[_S[code_open(_lang, indent=_i)]] = True

#: Loss segment labels (see ``segment_labels``).
SEG_RESPONSE, SEG_SOURCE, SEG_CODE, SEG_PROMPT = 0, 1, 2, 3


def _turns(sample):
    """(prompt, thought, items) of every turn of ``sample``, the first one first."""
    yield sample.prompt, sample.thought, sample.items
    for t in sample.turns:
        yield t.prompt, t.thought, t.items


#: A source reference is one token of its own: the source id between two U+FFFF, a
#: requested token of the tokenizer (the data stage adds one per source id the samples use).
#: U+FFFF is not allowed in XML, so no text of a train file can produce it, and a source id
#: cannot collide with text (issue 12: in the early dialect the source id ``1`` was the digit 1).
SOURCE_MARK = "\uffff"


def source_token(sid: str) -> str:
    """The requested-token text of source id ``sid``."""
    return SOURCE_MARK + sid + SOURCE_MARK


def source_id(text: str) -> str:
    """The source id of a ``<source>`` item's decoded text (models made before the source
    tokens held the bare id, which is returned as it is)."""
    t = text.strip()
    if len(t) >= 2 and t.startswith(SOURCE_MARK) and t.endswith(SOURCE_MARK):
        return t[1:-1]
    return t


def source_tokens(samples: Iterable) -> List[str]:
    """The source tokens (``source_token``) of every source id ``samples`` use, sorted."""
    ids = {it.text for s in samples for _p, _t, items in _turns(s) for it in items
           if it.kind == "source"}
    return [source_token(i) for i in sorted(ids)]


def _item_text(it) -> str:
    return source_token(it.text) if it.kind == "source" else it.text


def _pieces(sample) -> List[str]:
    out = [sample.system] if sample.system else []
    for user, assistant in sample.history:
        out += [user, assistant]
    for prompt, thought, items in _turns(sample):
        out.append(prompt)
        if thought:
            out.append(thought)
        out += [_item_text(it) for it in items if it.kind != "line-break"]
    return out


def training_texts(samples: Iterable) -> List[str]:
    """Every text piece of ``samples`` as it occurs (what the tokenizer is trained on)."""
    return [p for s in samples for p in _pieces(s)]


# ------------------------------------------------------------------ the layout, once
# Each helper returns the parts (id sequences, concatenated in order) of one element; the
# text inside is already encoded (special-token matching off).
def system_part(ids) -> List:
    """``<system> S </system>``"""
    return [[SYSTEM], ids, [END_SYSTEM]]


def prompt_part(ids) -> List:
    """A user turn: ``<prompt> <text> P </text> </prompt>``"""
    return [[PROMPT, TEXT], ids, [END_TEXT, END_PROMPT]]


def thought_part(ids) -> List:
    """``<thought> T </thought>``"""
    return [[THOUGHT], ids, [END_THOUGHT]]


def text_part(ids) -> List:
    """A text item of an answer: ``<text> T </text>``"""
    return [[TEXT], ids, [END_TEXT]]


def answer_text_part(ids) -> List:
    """A plain-text answer: ``<ai> <text> A </text> </ai>``"""
    return [[AI]] + text_part(ids) + [[END_AI]]


def is_answer_ids(tokens, vocab: int) -> bool:
    """True for an answer's own generated ids (as chat's memory keeps them): ``<thought>`` or
    ``<ai>`` first, ``</ai>`` last, every id below ``vocab``."""
    return (isinstance(tokens, (list, tuple)) and len(tokens) >= 2
            and all(isinstance(t, int) and 0 <= t < vocab for t in tokens)
            and tokens[0] in (AI, THOUGHT) and tokens[-1] == END_AI)


def _flat(parts) -> List[int]:
    return [int(i) for p in parts for i in p]


def _answer_parts(thought, items, enc) -> List:
    """``[<thought> T </thought>] <ai> items </ai>``: one turn's answer, as learned."""
    parts: List = thought_part(enc[thought]) if thought else []
    parts.append([AI])
    for it in items:
        if it.kind == "text":
            parts += text_part(enc[it.text])
        elif it.kind == "source":
            parts += [[SOURCE], enc[source_token(it.text)], [END_SOURCE]]
        elif it.kind == "line-break":
            parts.append([_S[LINE_BREAK if it.count == 1 else LINE_BREAK_2]])
        else:
            parts += [[_S[code_open(it.lang, it.inline, it.indent)]], enc[it.text],
                      [_S[code_close(it.lang)]]]
    parts.append([END_AI])
    return parts


def _stream(sample, enc: Dict[str, np.ndarray]) -> Tuple[List[np.ndarray], int]:
    parts: List = [[SAMPLE]]
    if sample.system:
        parts += system_part(enc[sample.system])
    for user, assistant in sample.history:
        # earlier exchanges as a client sends them back (rendered text; before the boundary,
        # so never learned): what ``turn_ids`` builds for a client's messages
        parts += prompt_part(enc[user]) + answer_text_part(enc[assistant])
    boundary = None
    for prompt, thought, items in _turns(sample):
        parts += prompt_part(enc[prompt])
        if boundary is None:
            boundary = sum(len(p) for p in parts)
        parts += _answer_parts(thought, items, enc)
    parts.append([END_SAMPLE])
    return parts, boundary


def _encoder(tokenizer) -> Callable[[str], List[int]]:
    return lambda text: tokenizer.encode(text, special=False).tolist()


def sample_head_ids(tokenizer, system: Optional[str] = None) -> List[int]:
    """``<sample> [<system>S</system>]``: how every stream starts."""
    parts: List = [[SAMPLE]]
    if system:
        parts += system_part(_encoder(tokenizer)(system))
    return _flat(parts)


# ------------------------------------------------------------------ system messages, once
#: What a caller's system message means as a token layout (issue 12; the CLI's ``--system``,
#: the API's ``system=``, a client's ``{"role": "system"}`` message in ``serve``, ``eval`` and
#: training's system-prompt variants all go through ``resolve_system``):
#:
#: * ``NO_SYSTEM`` (None, no system message at all): the model's default system prompt (the one
#:   most training samples used, recorded in model.poppins), so a bare question is asked the
#:   way most of the file was trained; a model without a default has no system part;
#: * ``EMPTY_SYSTEM`` (``""``, an empty or whitespace-only system message): no ``<system>``
#:   part at all (``<sample> <prompt> ...``);
#: * any other text: ``<system> text </system>``, the text as given (not stripped).
NO_SYSTEM: Optional[str] = None
EMPTY_SYSTEM = ""


def resolve_system(system: Optional[str], default: Optional[str]) -> Optional[str]:
    """The system text that goes into the layout for a caller's ``system`` (see ``NO_SYSTEM``
    and ``EMPTY_SYSTEM``), or None for no ``<system>`` part.  ``default``: the model's default
    system prompt (None or "" when it has none)."""
    if system is None:
        return default or None
    if not isinstance(system, str):
        raise PoppinsError("a system message must be a str (\"\" for none) or None (the "
                           "model's default)")
    return system if system.strip() else None


def system_head_ids(tokenizer, system: Optional[str], default: Optional[str]) -> List[int]:
    """``sample_head_ids`` for a caller's ``system`` as ``resolve_system`` reads it."""
    return sample_head_ids(tokenizer, resolve_system(system, default))


def prompt_ids(tokenizer, prompt: str, system: Optional[str] = None) -> List[int]:
    """The stream a model continues to answer ``prompt``:
    ``<sample> [<system>S</system>] <prompt><text>P</text></prompt>``, texts encoded with
    special-token matching off (markup in them stays plain text)."""
    return sample_head_ids(tokenizer, system) + _flat(prompt_part(_encoder(tokenizer)(prompt)))


def answer_ids(tokenizer, items, thought: Optional[str] = None) -> List[int]:
    """The ids a model produces for one answer (``[<thought>...</thought>] <ai> ... </ai>``),
    exactly as the training streams hold it."""
    e = _encoder(tokenizer)
    texts = ([thought] if thought else []) + [_item_text(it) for it in items
                                               if it.kind != "line-break"]
    enc = {t: e(t) for t in texts}
    return _flat(_answer_parts(thought, items, enc))


def turn_ids(tokenizer, role: str, text: str, tokens=None) -> List[int]:
    """One conversation turn: a user message is a prompt part; an assistant message is its
    own generated ids when ``tokens`` holds them (``is_answer_ids``: replayed as they are,
    thoughts included), else ``<ai><text>A</text></ai>``."""
    if role == "user":
        return _flat(prompt_part(_encoder(tokenizer)(text)))
    if is_answer_ids(tokens, tokenizer.vocab_size):
        return [int(t) for t in tokens]
    return _flat(answer_text_part(_encoder(tokenizer)(text)))


def encode_samples(samples: Sequence, tokenizer, threads=None) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids (u32) of all ``samples`` concatenated, and their index records."""
    distinct = sorted({p for s in samples for p in _pieces(s)})
    encoded = tokenizer.encode_batch(distinct, special=False, threads=threads)
    enc = {text: np.asarray(ids, dtype=np.uint32) for text, ids in zip(distinct, encoded)}
    chunks: List[np.ndarray] = []
    index = np.zeros(len(samples), dtype=INDEX_DTYPE)
    offset = 0
    for i, s in enumerate(samples):
        parts, boundary = _stream(s, enc)
        arr = np.concatenate([np.asarray(p, dtype=np.uint32) for p in parts])
        chunks.append(arr)
        index[i] = (offset * 4, len(arr), boundary)
        offset += len(arr)
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
    return ids.astype(TOKEN_DTYPE, copy=False), index


def write_bins(corpus_path: Path, index_path: Path, ids: np.ndarray, index: np.ndarray) -> None:
    with open(corpus_path, "wb") as f:
        f.write(np.ascontiguousarray(ids, dtype=TOKEN_DTYPE).tobytes())
    with open(index_path, "wb") as f:
        f.write(np.ascontiguousarray(index, dtype=INDEX_DTYPE).tobytes())


def read_bins(out_dir, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Memory-map ``{split}_corpus.bin`` (read-only) and read its index, with sanity checks."""
    out_dir = Path(out_dir)
    corpus, idx = out_dir / f"{split}_corpus.bin", out_dir / f"{split}_index.bin"
    for p in (corpus, idx):
        if not p.is_file():
            raise PoppinsError(f"{p} is missing; run the data stage (python -m poppins train "
                               f"--data-only)")
    csize, isize = corpus.stat().st_size, idx.stat().st_size
    if csize % 4 or isize % INDEX_DTYPE.itemsize:
        raise PoppinsError(f"{corpus} / {idx} have sizes that are not whole records "
                           "(truncated?); run the data stage again")
    ids = (np.memmap(corpus, dtype=TOKEN_DTYPE, mode="r") if csize
           else np.zeros(0, dtype=TOKEN_DTYPE))
    index = np.fromfile(idx, dtype=INDEX_DTYPE)
    if len(index):
        ends = index["offset"] // 4 + index["count"]
        if int(ends.max()) > len(ids) or np.any(index["boundary"] >= index["count"]):
            raise PoppinsError(f"{idx} does not match {corpus}; run the data stage again")
    return ids, index


def segment_labels(ids: np.ndarray) -> np.ndarray:
    """Per token: SEG_SOURCE inside ``<source>``...``</source>`` (tags excluded), SEG_CODE for
    a code block (tags included), SEG_PROMPT for a prompt (tags included: a conversation's
    later prompts are the user's words, never learned), SEG_RESPONSE otherwise.  Derived from the ids alone, which
    is possible because user text never produces a special token."""
    ids = np.asarray(ids)
    small = ids < len(SPECIAL_TOKENS)
    safe = np.where(small, ids, 0)
    is_open = small & _CODE_OPEN[safe]
    is_close = small & _CODE_CLOSE[safe]
    depth = np.cumsum(is_open, dtype=np.int64) - np.cumsum(is_close, dtype=np.int64)
    in_code = (depth > 0) | is_close
    s_open, s_close = ids == SOURCE, ids == END_SOURCE
    s_depth = np.cumsum(s_open, dtype=np.int64) - np.cumsum(s_close, dtype=np.int64)
    in_source = (s_depth > 0) & ~s_open
    p_open, p_close = ids == PROMPT, ids == END_PROMPT
    in_prompt = (np.cumsum(p_open, dtype=np.int64) - np.cumsum(p_close, dtype=np.int64) > 0) \
        | p_close
    labels = np.full(ids.shape, SEG_RESPONSE, dtype=np.uint8)
    labels[in_source] = SEG_SOURCE
    labels[in_code] = SEG_CODE
    labels[in_prompt] = SEG_PROMPT
    return labels

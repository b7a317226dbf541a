"""Token streams of samples, and the ``*_corpus.bin`` / ``*_index.bin`` files.

One sample is the stream::

    <sample> [<system> S </system>] <prompt> <text> P </text> </prompt> [<thought> T </thought>]
    <ai> items </ai> </sample>

(a conversation repeats ``<prompt>`` ... ``</ai>`` once per turn before ``</sample>``)

where an item is ``<text>`` T ``</text>``, ``<source>`` ID ``</source>``, a line-break token, or a
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
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

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


def _pieces(sample) -> List[str]:
    out = [sample.system] if sample.system else []
    for prompt, thought, items in _turns(sample):
        out.append(prompt)
        if thought:
            out.append(thought)
        out += [it.text for it in items if it.kind != "line-break"]
    return out


def training_texts(samples: Iterable) -> List[str]:
    """Every text piece of ``samples`` as it occurs (what the tokenizer is trained on)."""
    return [p for s in samples for p in _pieces(s)]


def _stream(sample, enc: Dict[str, np.ndarray]) -> Tuple[List[np.ndarray], int]:
    parts: List = [[SAMPLE]]
    if sample.system:
        parts += [[_S["<system>"]], enc[sample.system], [_S["</system>"]]]
    boundary = None
    for prompt, thought, items in _turns(sample):
        parts += [[PROMPT, _S["<text>"]], enc[prompt], [_S["</text>"], END_PROMPT]]
        if boundary is None:
            boundary = sum(len(p) for p in parts)
        if thought:
            parts += [[_S["<thought>"]], enc[thought], [_S["</thought>"]]]
        parts.append([AI])
        for it in items:
            if it.kind == "text":
                parts += [[_S["<text>"]], enc[it.text], [_S["</text>"]]]
            elif it.kind == "source":
                parts += [[SOURCE], enc[it.text], [END_SOURCE]]
            elif it.kind == "line-break":
                parts.append([_S[LINE_BREAK if it.count == 1 else LINE_BREAK_2]])
            else:
                parts += [[_S[code_open(it.lang, it.inline, it.indent)]], enc[it.text],
                          [_S[code_close(it.lang)]]]
        parts.append([END_AI])
    parts.append([END_SAMPLE])
    return parts, boundary


def prompt_ids(tokenizer, prompt: str, system: Optional[str] = None) -> List[int]:
    """The stream a model continues to answer ``prompt``:
    ``<sample> [<system>S</system>] <prompt><text>P</text></prompt>``, texts encoded with
    special-token matching off (markup in them stays plain text)."""
    ids = [SAMPLE]
    if system:
        ids += [_S["<system>"], *tokenizer.encode(system, special=False).tolist(), _S["</system>"]]
    ids += [PROMPT, _S["<text>"], *tokenizer.encode(prompt, special=False).tolist(),
            _S["</text>"], END_PROMPT]
    return ids


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

"""tokenizer.json (Hugging Face ``tokenizers`` format) and tokenizer_config.json, both ways.

What we write, so that ``tokenizers.Tokenizer.from_file`` gives our ids on any text:

* ``added_tokens``: the special tokens (``special: true``) and the requested tokens
  (``special: false``), never normalized, no strip/single-word flags;
* ``normalizer``: null; ``pre_tokenizer``: Sequence[Split(GPT-4 pattern, Isolated),
  ByteLevel(add_prefix_space=false, use_regex=false)]; ``decoder``: ByteLevel.  The pattern is
  the interop string ``PATTERN``; the reader runs it with its own Unicode version, ours come
  from :mod:`.unicode_classes` (the two may split code points assigned in between
  differently, see core.py);
* ``model``: BPE with the GPT-2 byte-to-unicode alphabet; ``vocab`` holds every id (added
  tokens under their own content), ``merges`` are ``"left right"`` strings in rank order
  (byte-level strings never contain a space, so every tokenizers version reads them).

The reader accepts files of this shape (merges as strings or as pairs) and refuses others
with a :class:`~poppins.errors.PoppinsError` naming the file.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

from ..errors import PoppinsError
from .reference import PATTERN

#: Format marker kept in tokenizer_config.json (tokenizer.json itself is Hugging Face's).
CONFIG_FORMAT = "poppins-tokenizer"
CONFIG_VERSION = 1


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR: Dict[int, str] = bytes_to_unicode()
CHAR_TO_BYTE: Dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}


def to_byte_level(data: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in data)


def from_byte_level(s: str) -> Optional[bytes]:
    """The bytes a byte-level string stands for, or None if it is not one."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return None


def pre_tokenizer_json() -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}


def build(vocab_bytes: List[bytes], added: List[Tuple[str, int, bool]],
          merges: List[Tuple[int, int]]) -> dict:
    """The tokenizer.json object. vocab_bytes[i] = bytes of id i (added ids: unused)."""
    added_ids = {tid for _, tid, _ in added}
    keys = [None] * len(vocab_bytes)
    for content, tid, _ in added:
        keys[tid] = content
    for i, b in enumerate(vocab_bytes):
        if i not in added_ids:
            keys[i] = to_byte_level(b)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": tid, "content": content, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": special}
                         for content, tid, special in sorted(added, key=lambda t: t[1])],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_json(),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {k: i for i, k in enumerate(keys)},
                  "merges": [f"{keys[a]} {keys[b]}" for a, b in merges]},
    }


def config(special_tokens: List[str], requested_tokens: List[str]) -> dict:
    """tokenizer_config.json: the special tokens' roles, for transformers and for people."""
    roles = {"bos_token": "<sample>", "eos_token": "</sample>", "unk_token": "<unknown>"}
    cfg: dict = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role, tok in roles.items():
        cfg[role] = tok if tok in special_tokens else None
    cfg.update({
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "poppins": {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
                    "special_tokens": len(special_tokens),
                    "requested_tokens": list(requested_tokens),
                    "pre_tokenizer": "gpt4", "roles": {
                        "sample_open": "<sample>", "sample_close": "</sample>",
                        "answer_close": "</ai>"}},
    })
    return with_chat_template(cfg)


def with_chat_template(cfg: dict, default_system: Optional[str] = None) -> dict:
    """``cfg`` with the ``chat_template`` of our conversation layout (poppins.export.template;
    ``default_system``: the model's default system prompt, used when no system message)."""
    from ..export.template import chat_template   # function-level: export imports this module
    cfg["chat_template"] = chat_template(default_system)
    return cfg


def loads(text: str, where: str):
    """The JSON value of a tokenizer.json text; PoppinsError (naming ``where``) otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoppinsError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise PoppinsError(f"{where}: not valid JSON (nested too deeply)") from None


def _bool_or_none(v) -> bool:
    return v is None or isinstance(v, bool)


def parse(obj: dict, where: str):
    """(vocab_bytes, added [(content, id, special)], merges [(a, b, new)]) from tokenizer.json.

    Every field is typed; ids must be dense (``0 .. n-1`` for the n distinct ids, so memory
    is proportional to the file); every merge names two vocabulary entries whose
    concatenation is one.  Anything else raises a PoppinsError naming ``where`` and the
    field."""
    def bad(field, msg):
        return PoppinsError(f"{where}: field {field}: {msg}")

    def short(v, n=40):
        r = repr(v)
        return r if len(r) <= n else r[:n] + "..."

    if not isinstance(obj, dict) or obj.get("version") != "1.0":
        raise PoppinsError(f"{where}: not a Hugging Face tokenizer.json "
                           "(expected \"version\": \"1.0\")")
    model = obj.get("model")
    if not isinstance(model, dict):
        raise bad("model", "missing or not an object")
    if model.get("type") != "BPE":
        raise bad("model.type", f"{short(model.get('type'))} is not BPE")
    if obj.get("normalizer") is not None:
        raise bad("normalizer", "a normalizer is not supported by poppins' tokenizer")
    if obj.get("pre_tokenizer") != pre_tokenizer_json():
        pt = obj.get("pre_tokenizer")
        # tolerate differences in trim_offsets only
        pts = pt.get("pretokenizers") if isinstance(pt, dict) else None
        ok = (isinstance(pt, dict) and pt.get("type") == "Sequence"
              and isinstance(pts, list) and len(pts) == 2 and isinstance(pts[1], dict)
              and pts[0] == pre_tokenizer_json()["pretokenizers"][0]
              and pts[1].get("type") == "ByteLevel"
              and pts[1].get("add_prefix_space") in (None, False)
              and pts[1].get("use_regex") in (None, False))
        if not ok:
            raise bad("pre_tokenizer", "not poppins' GPT-4 split + byte-level")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise bad(f"model.{key}", "this BPE option is not supported")
    for key in ("byte_fallback", "ignore_merges"):
        if model.get(key):
            raise bad(f"model.{key}", "BPE byte_fallback / ignore_merges are not supported")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise bad("model.vocab", "missing, empty or not an object")
    raw_added = obj.get("added_tokens")
    if raw_added is None:
        raw_added = []
    if not isinstance(raw_added, list):
        raise bad("added_tokens", "not a list")
    # ids are bounded by the number of entries before anything is sized by them
    limit = len(vocab) + len(raw_added)
    for key, tid in vocab.items():
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < limit:
            raise bad(f"model.vocab[{short(key)}]", f"id {short(tid)} is not an integer in "
                      f"0..{limit - 1} (ids are dense: at most one per entry)")
    added = []
    for k, t in enumerate(raw_added):
        if not isinstance(t, dict):
            raise bad(f"added_tokens[{k}]", "not an object")
        content, tid = t.get("content"), t.get("id")
        if not isinstance(content, str) or not content:
            raise bad(f"added_tokens[{k}].content", "not a non-empty string")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"added_tokens[{k}].content", "not valid Unicode text") from None
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < limit:
            raise bad(f"added_tokens[{k}].id", f"{short(tid)} is not an integer in "
                      f"0..{limit - 1}")
        for flag in ("lstrip", "rstrip", "single_word", "special", "normalized"):
            if not _bool_or_none(t.get(flag)):
                raise bad(f"added_tokens[{k}].{flag}", "not true or false")
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise bad(f"added_tokens[{k}]", f"added token {content!r}: lstrip/rstrip/"
                      "single_word are not supported")
        added.append((content, tid, bool(t.get("special"))))
    added_ids = {tid for _, tid, _ in added}
    if len(added_ids) != len(added) or len({c for c, _, _ in added}) != len(added):
        raise bad("added_tokens", "an id or a content is listed twice")
    size = max(max(vocab.values()), max(added_ids, default=-1)) + 1
    vocab_bytes: List[Optional[bytes]] = [None] * size
    for content, tid, _ in added:
        vocab_bytes[tid] = content.encode("utf-8")
    for key, tid in vocab.items():
        if tid in added_ids:
            continue
        b = from_byte_level(key)
        if b is None or not b:
            raise bad(f"model.vocab[{short(key)}]", "not a byte-level token")
        if vocab_bytes[tid] is not None:
            raise bad(f"model.vocab[{short(key)}]", f"id {tid} is given to two entries")
        vocab_bytes[tid] = b
    missing = [i for i, b in enumerate(vocab_bytes) if b is None]
    if missing:
        raise bad("model.vocab", f"ids without a token: {missing[:5]}")
    singles = {b[0] for i, b in enumerate(vocab_bytes) if len(b) == 1 and i not in added_ids}
    if len(singles) != 256:
        raise bad("model.vocab", f"{256 - len(singles)} of the 256 byte tokens are missing")
    raw_merges = model.get("merges")
    if raw_merges is None:
        raw_merges = []
    if not isinstance(raw_merges, list):
        raise bad("model.merges", "not a list")
    merges, seen_pairs = [], set()
    for k, m in enumerate(raw_merges):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, list):
            parts = m
        else:
            parts = None
        if (parts is None or len(parts) != 2 or not all(isinstance(x, str) for x in parts)
                or parts[0] not in vocab or parts[1] not in vocab
                or parts[0] + parts[1] not in vocab):
            raise bad(f"model.merges[{k}]", f"{short(m)} does not name vocabulary entries")
        a, b, new = vocab[parts[0]], vocab[parts[1]], vocab[parts[0] + parts[1]]
        if a in added_ids or b in added_ids or new in added_ids:
            raise bad(f"model.merges[{k}]", f"{short(m)} involves an added token")
        if (a, b) in seen_pairs:
            raise bad(f"model.merges[{k}]", f"{short(m)} repeats an earlier merge")
        seen_pairs.add((a, b))
        merges.append((a, b, new))
    return vocab_bytes, added, merges


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"

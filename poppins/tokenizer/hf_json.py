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


def parse(obj: dict, where: str):
    """(vocab_bytes, added [(content, id, special)], merges [(a, b, new)]) from tokenizer.json."""
    def bad(msg):
        return PoppinsError(f"{where}: {msg}")

    if not isinstance(obj, dict) or obj.get("version") != "1.0":
        raise bad("not a Hugging Face tokenizer.json (expected \"version\": \"1.0\")")
    model = obj.get("model") or {}
    if model.get("type") != "BPE":
        raise bad(f"model type {model.get('type')!r} is not BPE")
    if obj.get("normalizer") is not None:
        raise bad("a normalizer is not supported by poppins' tokenizer")
    if obj.get("pre_tokenizer") != pre_tokenizer_json():
        pt = obj.get("pre_tokenizer")
        # tolerate differences in trim_offsets only
        ok = (isinstance(pt, dict) and pt.get("type") == "Sequence"
              and len(pt.get("pretokenizers", [])) == 2
              and pt["pretokenizers"][0] == pre_tokenizer_json()["pretokenizers"][0]
              and pt["pretokenizers"][1].get("type") == "ByteLevel"
              and not pt["pretokenizers"][1].get("add_prefix_space")
              and not pt["pretokenizers"][1].get("use_regex"))
        if not ok:
            raise bad("pre_tokenizer is not poppins' GPT-4 split + byte-level")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise bad(f"BPE option {key} is not supported")
    if model.get("byte_fallback") or model.get("ignore_merges"):
        raise bad("BPE byte_fallback / ignore_merges are not supported")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise bad("model.vocab is missing")
    size = max(vocab.values()) + 1
    added = []
    for t in obj.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise bad(f"added token {t.get('content')!r}: lstrip/rstrip/single_word are not supported")
        added.append((str(t["content"]), int(t["id"]), bool(t.get("special"))))
        size = max(size, int(t["id"]) + 1)
    added_ids = {tid for _, tid, _ in added}
    vocab_bytes: List[Optional[bytes]] = [None] * size
    for content, tid, _ in added:
        vocab_bytes[tid] = content.encode("utf-8")
    for key, tid in vocab.items():
        if tid in added_ids:
            continue
        b = from_byte_level(key)
        if b is None:
            raise bad(f"vocabulary entry {key!r} is not a byte-level token")
        vocab_bytes[tid] = b
    missing = [i for i, b in enumerate(vocab_bytes) if b is None]
    if missing:
        raise bad(f"ids without a token: {missing[:5]}")
    merges = []
    for k, m in enumerate(model.get("merges") or []):
        if isinstance(m, str):
            parts = m.split(" ")
        else:
            parts = list(m)
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab \
                or parts[0] + parts[1] not in vocab:
            raise bad(f"merge {k} ({m!r}) does not name vocabulary entries")
        merges.append((vocab[parts[0]], vocab[parts[1]], vocab[parts[0] + parts[1]]))
    return vocab_bytes, added, merges


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"

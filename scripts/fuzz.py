#!/usr/bin/env python3
"""Fuzz the files a user can hand poppins: model files, checkpoints, tokenizer.json, train.xml
(with imports), the chat memory database and eval probes files; and its command lines.

    python scripts/fuzz.py --cases 100000            # spread over the kinds (make fuzz)
    python scripts/fuzz.py --cases 500 --kinds model  # one kind
    python scripts/fuzz.py --cases 200 --seed 7 -v    # print each failure's traceback

Each kind starts from valid files made here (a trained data stage, a tiny exported model, a
checkpoint, a memory database) and mutates them: JSON headers field by field (hostile numbers,
wrong types, deleted and added keys, NaN), re-sealed with a correct SHA-256 so the checks behind
the checksum are reached; raw bytes (flips, cuts, inserted runs); train.xml text (attribute
floods, huge constants, odd indents, deep/looping/escaping imports, slow phrase patterns); SQLite
files (page damage, changed schemas, foreign tables, bad stored token JSON).  Every case must
either work or raise a PoppinsError whose message names the file; anything else (another
exception, MemoryError, a case over --timeout seconds, a crashed worker) is a failure.  A
refused input must also be left byte-identical, and so must the previous data-stage output
(a memory database that opened and was written to is no longer "refused": damage SQLite
finds only on a later page read is still a clean error, but after normal writes).

The ``cli`` kind runs ``poppins.cli.main(argv)`` in-process (infer, tokenize, eval --max-cases
1, train --data-only, chat with an empty stdin, serve with a missing model so nothing binds)
with hostile numbers (2**63, 5000 digits, nan, inf, 1e400, '\u00b2', empty, unicode digits),
unknown flags and missing values: it must exit 0 or 2 (argparse's SystemExit included) with no
traceback, and an error's stderr must be at most 21 lines naming a flag or file.  The ``probes``
kind mutates an eval probes file (bytes and XML structure) for ``read_probes``.

Cases run in worker processes (one per kind, restarted after a crash); the exit code is 1 when
any case failed.  The library entry points are ``make_fixture``, ``gen_case`` and ``run_case``
(tests/test_fuzz_*.py use them with a few hundred cases).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("model", "checkpoint", "tokenizer", "trainxml", "memory", "cli", "probes")
#: share of the cases per kind (train.xml and command-line cases are the slowest)
WEIGHTS = {"model": 0.17, "checkpoint": 0.17, "tokenizer": 0.17, "trainxml": 0.10,
           "memory": 0.17, "cli": 0.08, "probes": 0.14}

HOSTILE_NUMBERS = [0, -1, 1, 2, 3, 7, 63, 64, 65, 255, 256, 1 << 16, 2 ** 31 - 1, 2 ** 31,
                   2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 9, 10 ** 12, 10 ** 20, -(2 ** 63),
                   0.5, -0.0, 1e308, -1e308, 1e-320, float("nan"), float("inf"), float("-inf")]
HOSTILE_OTHER = [None, True, False, "", "x", "\ud800", "\x00", "é" * 3, "9" * 5000, [], {},
                 [1, 2], [[]], {"a": 1}, [None], ["ternary2"], "ternary2", "f32", "<f8", "|V8",
                 "mla", "mha", "float64"]


# ----------------------------------------------------------------------------- fixture

TRAIN_XML = """<?xml version="1.0" encoding="UTF-8"?>
<train>
  <imports>
    <import path="part.xml"/>
  </imports>
  <constants>
    <bpe-vocab-size>420</bpe-vocab-size>
    <bpe-min-merge-frequency>2</bpe-min-merge-frequency>
    <context-length>64</context-length>
  </constants>
  <system-prompts>
    <system id="sys::main">You are Poppins.</system>
  </system-prompts>
  <prompts>
    <prompt id="pr::cat">What is a cat?</prompt>
    <prompt id="pr::dog">What is a dog?</prompt>
    <prompt id="pr::greet">How do I greet?</prompt>
  </prompts>
  <responses>
    <response id="re::cat">A small animal that purrs.</response>
    <response id="re::dog">A loyal animal that barks.</response>
    <response id="re::greet">Like this:</response>
  </responses>
  <sources>
    <source id="src::wiki" url="https://example.org/cats" title="Cats"/>
  </sources>
  <code-snippets>
    <code id="code::hi" lang="bash">echo hi</code>
  </code-snippets>
  <samples>
    <sample-ids prompt="pr::cat" response="re::cat" source="src::wiki"/>
    <sample-ids prompt="pr::dog" response="re::dog"/>
    <sample>
      <prompt id="pr::greet"/>
      <response id="re::greet"/>
      <code id="code::hi" indent="2"/>
    </sample>
  </samples>
  <phrases>
    <phrase pattern="^What is (.+)\\?$">
      <variant value="Tell me about $1."/>
      <variant value="Explain $1, please."/>
    </phrase>
  </phrases>
</train>
"""

PART_XML = """<?xml version="1.0" encoding="UTF-8"?>
<train>
  <prompts>
    <prompt id="pr::bird">What is a bird?</prompt>
  </prompts>
  <responses>
    <response id="re::bird">An animal with feathers that sings.</response>
  </responses>
  <samples>
    <sample-ids prompt="pr::bird" response="re::bird"/>
  </samples>
</train>
"""


PROBES_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- probes of the fuzz train.xml -->
<probes>
  <paraphrases>
    <paraphrase expect="pr::cat">Tell me what a cat is.</paraphrase>
    <paraphrase expect="pr::dog" system="Be brief.">what is a dog</paraphrase>
  </paraphrases>
  <off-topic>
    <question>What is the capital of France?</question>
    <question system="">How do I bake bread?</question>
  </off-topic>
</probes>
"""


class Fixture:
    """The valid files the mutations start from, in ``root``."""

    def __init__(self, root: Path):
        from poppins.datastage import prepare_data
        from poppins.training.export import export_model
        from poppins.memory import Memory
        from poppins.model.config import ModelConfig
        from poppins.model.model import Model
        from poppins.training.checkpoint import save_checkpoint
        from poppins.training.config import TrainConfig

        self.root = root
        src = root / "src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "train.xml").write_text(TRAIN_XML, encoding="utf-8")
        (src / "part.xml").write_text(PART_XML, encoding="utf-8")
        self.train_xml = TRAIN_XML
        self.part_xml = PART_XML
        self.out = root / "out"
        prepare_data(src / "train.xml", self.out, log=None)
        self.out_bytes = _tree_bytes(self.out)
        self.tokenizer_json = (self.out / "tokenizer.json").read_text(encoding="utf-8")
        vocab = json.loads(self.tokenizer_json)["model"]["vocab"]
        cfg = ModelConfig(vocab_size=len(vocab), dim=16, layers=1, heads=2, context_length=32)
        model = Model(cfg, seed=1, threads=1)
        self.model_path = root / "model.poppins"
        export_model(model, self.model_path, tokenizer_json=self.tokenizer_json,
                     sources={"src::wiki": {"url": "https://example.org/cats", "title": "Cats"}},
                     default_system="You are Poppins.", head_dtype="int8")
        self.model_bytes = self.model_path.read_bytes()
        mla = ModelConfig(vocab_size=len(vocab), dim=16, layers=1, heads=2, context_length=32,
                          attention="mla", q_latent_dim=8, tie_embeddings=False)
        self.mla_path = root / "mla.poppins"
        export_model(Model(mla, seed=2, threads=1), self.mla_path,
                     tokenizer_json=self.tokenizer_json, sources={}, default_system=None,
                     head_dtype="f16")
        self.mla_bytes = self.mla_path.read_bytes()
        tc = TrainConfig()
        self.ckpt_path = root / "last.ckpt"
        n = model.flat_params.size
        save_checkpoint(self.ckpt_path, {
            "poppins_version": "fuzz", "train_config": tc.to_dict(),
            "model_config": cfg.to_dict(), "manifest_sha256": "0" * 64, "step": 3,
            "total_steps": 10, "epoch": 0, "row": 5, "adam_t": 3,
            "history": [[1, 5.5, None], [2, 5.25, 5.0]]},
            {"params": model.flat_params, "adam_m": model.flat_params * 0.5,
             "adam_v": model.flat_params[::-1].copy()[:n]})
        self.ckpt_bytes = self.ckpt_path.read_bytes()
        self.db_path = root / "memory.db"
        with Memory(self.db_path) as mem:
            for k in range(3):
                cid = mem.new_conversation(system="Be brief." if k else None, title=f"t{k}")
                mem.add_turn(cid, "What is a cat?", "A small animal.", tokens=[5, 6, 7])
                mem.add_turn(cid, "And a dog?", "A loyal one.", tokens=None)
        con = sqlite3.connect(str(self.db_path))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # all in the main file, still WAL
        con.close()
        self.db_bytes = self.db_path.read_bytes()
        self.probes_xml = PROBES_XML


def _tree_bytes(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def make_fixture(root) -> Fixture:
    return Fixture(Path(root))


# ----------------------------------------------------------------------------- mutators

def _paths(obj, prefix=(), out=None, limit=4000):
    """Every (path) inside a JSON value, breadth-limited."""
    if out is None:
        out = []
    if len(out) >= limit:
        return out
    out.append(prefix)
    if isinstance(obj, dict):
        for k, v in obj.items():
            _paths(v, prefix + (k,), out, limit)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:64]):
            _paths(v, prefix + (i,), out, limit)
    return out


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _hostile_value(rng: random.Random, old):
    r = rng.random()
    if isinstance(old, bool) or old is None:
        return rng.choice(HOSTILE_OTHER + HOSTILE_NUMBERS)
    if isinstance(old, (int, float)) and r < 0.75:
        if r < 0.35:
            return rng.choice(HOSTILE_NUMBERS)
        if r < 0.55:
            return old + rng.choice([-64, -1, 1, 64, 1 << 20])
        if r < 0.65:
            return -old if old else -1
        return old * rng.choice([2, 1000, 10 ** 9]) if old else 10 ** 9
    if isinstance(old, str) and r < 0.5:
        if not old:
            return "x"
        i = rng.randrange(len(old))
        return rng.choice([old[:i], old + old, old[:i] + "\ud800" + old[i:], old.upper(),
                           old[:i] + chr(rng.randrange(1, 0x3000)) + old[i + 1:]])
    if isinstance(old, list) and r < 0.5:
        if not old:
            return [rng.choice(HOSTILE_OTHER + HOSTILE_NUMBERS)]
        return rng.choice([old[:-1], old + old[-1:], old[::-1], old[:1], [old[0]] * 3,
                           [rng.choice(HOSTILE_NUMBERS)] + old[1:]])
    return rng.choice(HOSTILE_OTHER + HOSTILE_NUMBERS)


def mutate_json(obj, rng: random.Random, ops: int = 0, focus: Optional[Callable] = None):
    """A copy of ``obj`` with 1-3 (or ``ops``) field mutations; ``focus`` filters the paths."""
    obj = copy.deepcopy(obj)
    for _ in range(ops or rng.choice([1, 1, 1, 2, 3])):
        paths = _paths(obj)
        if focus is not None:
            paths = [p for p in paths if focus(p)] or paths
        path = rng.choice(paths)
        if not path:
            continue
        parent = _get(obj, path[:-1])
        key = path[-1]
        op = rng.random()
        if op < 0.7:
            parent[key] = _hostile_value(rng, parent[key])
        elif op < 0.85:
            del parent[key]
        elif op < 0.92 and isinstance(parent, dict):
            parent[rng.choice(["zzz", "extra", key + "_", "name", "shape"])] = \
                rng.choice(HOSTILE_OTHER + HOSTILE_NUMBERS)
        elif isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
        else:
            parent[key] = [parent[key]]
    return obj


def mutate_bytes(data: bytes, rng: random.Random, ops: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(ops or rng.choice([1, 1, 2, 4, 16])):
        if not b:
            b += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.4:
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.55:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 0xC0, 0xED, ord('"'), ord("{"), ord("<")])
        elif op < 0.7:
            del b[i:i + rng.choice([1, 2, 7, 64, 4096])]
        elif op < 0.8:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8])))
        elif op < 0.9:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.choice([1, 16, 256])]
        else:
            del b[i:]
    return bytes(b)


def _frame_parts(raw: bytes) -> Tuple[bytes, dict, bytes]:
    """(magic+version, header, data bytes) of a container file."""
    from poppins.container import PREFIX, PREFIX_SIZE, TRAILER_SIZE, align

    magic, version, _, hlen = PREFIX.unpack(raw[:PREFIX_SIZE])
    header = json.loads(raw[PREFIX_SIZE:PREFIX_SIZE + hlen])
    start = align(PREFIX_SIZE + hlen)
    return raw[:12], header, raw[start:len(raw) - TRAILER_SIZE]


def seal(head12: bytes, header, data: bytes) -> bytes:
    """A container file with a correct trailer and SHA-256 around ``header`` and ``data``."""
    from poppins.container import TRAILER, TRAILER_MAGIC, align

    hb = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8",
                                                                            "surrogatepass")
    body = head12 + struct.pack("<IQ", 0, len(hb)) + hb
    body += b"\0" * (align(len(body)) - len(body)) + data
    return body + TRAILER.pack(TRAILER_MAGIC, len(data), hashlib.sha256(body).digest())


def _mutate_container(raw: bytes, rng: random.Random, focus_keys=()) -> bytes:
    head12, header, data = _frame_parts(raw)
    r = rng.random()
    if r < 0.08:
        return mutate_bytes(raw, rng)                       # the checksum must catch these
    if r < 0.16:                                            # damaged data, valid checksum
        return seal(head12, header, mutate_bytes(data, rng, 2) if rng.random() < 0.5 else data)
    if r < 0.22:
        head12 = mutate_bytes(head12, rng, 1)[:12].ljust(12, b"\0")
        return seal(head12, header, data)
    focus = None
    if focus_keys and rng.random() < 0.6:
        key = rng.choice(focus_keys)
        focus = lambda p, key=key: len(p) >= 1 and p[0] == key  # noqa: E731
    return seal(head12, mutate_json(header, rng, focus=focus), data)


# ----------------------------------------------------------------------------- cases

def gen_case(kind: str, fx: Fixture, rng: random.Random) -> Dict[str, Any]:
    """One mutated input: {"files": {name: bytes}, ...} for ``run_case``."""
    if kind == "model":
        base = fx.model_bytes if rng.random() < 0.75 else fx.mla_bytes
        r = rng.random()
        if r < 0.15:   # the embedded tokenizer.json
            head12, header, data = _frame_parts(base)
            tj = json.loads(header["tokenizer"])
            header["tokenizer"] = json.dumps(mutate_json(tj, rng), ensure_ascii=False)
            return {"files": {"model.poppins": seal(head12, header, data)}}
        return {"files": {"model.poppins": _mutate_container(
            base, rng, ("config", "config", "tensors", "tensors", "sources", "data_bytes"))}}
    if kind == "checkpoint":
        return {"files": {"last.ckpt": _mutate_container(
            fx.ckpt_bytes, rng, ("model_config", "train_config", "arrays", "arrays", "step",
                                 "history", "data_bytes"))}}
    if kind == "tokenizer":
        r = rng.random()
        if r < 0.25:
            data = mutate_bytes(fx.tokenizer_json.encode("utf-8"), rng)
        else:
            obj = json.loads(fx.tokenizer_json)
            focus = rng.choice([None, "vocab", "merges", "added_tokens"])
            f = None
            if focus == "vocab":
                f = lambda p: p[:2] == ("model", "vocab")  # noqa: E731
            elif focus == "merges":
                f = lambda p: p[:2] == ("model", "merges")  # noqa: E731
            elif focus == "added_tokens":
                f = lambda p: p[:1] == ("added_tokens",)  # noqa: E731
            if focus == "vocab" and rng.random() < 0.3:   # one hostile id, like 10^8
                vocab = obj["model"]["vocab"]
                k = rng.choice(list(vocab))
                vocab[k] = rng.choice([10 ** 8, 2 ** 31, -1, len(vocab), 10 ** 20, 1.5])
            else:
                obj = mutate_json(obj, rng, focus=f)
            data = json.dumps(obj, ensure_ascii=False, indent=rng.choice([None, 2])).encode(
                "utf-8", "surrogatepass")
        return {"files": {"tokenizer.json": data}, "text": rng.choice(
            ["What is a cat?", "", "héllo wörld 😀", "<sample>x</sample>", "a\ud800b"])}
    if kind == "trainxml":
        return _gen_trainxml(fx, rng)
    if kind == "memory":
        return _gen_memory(fx, rng)
    if kind == "cli":
        return _gen_cli(fx, rng)
    if kind == "probes":
        return _gen_probes(fx, rng)
    raise ValueError(kind)


_XML_SNIPPETS = [
    '<constants><bpe-vocab-size>1000000000000</bpe-vocab-size></constants>',
    '<constants><bpe-min-merge-frequency>100000000000000000000</bpe-min-merge-frequency></constants>',
    '<constants><context-length>2147483647</context-length></constants>',
    '<constants><embedding-dim>1000000000</embedding-dim></constants>',
    '<constants><learning-rate>nan</learning-rate></constants>',
    '<constants><steps>' + "9" * 5000 + '</steps></constants>',
    '<constants><constant key="bpe_vocab_size" value="99999999999999"/></constants>',
    '<imports><import path="../outside.xml"/></imports>',
    '<imports><import path="/etc/passwd.xml"/></imports>',
    '<imports><import path="' + "a" * 5000 + '.xml"/></imports>',
    '<imports><import path="' + "d/" * 300 + 'x.xml"/></imports>',
    '<imports><import path="loop.xml"/></imports>',
    '<imports><import path="deep0.xml"/></imports>',
    '<imports><import path="train.xml"/></imports>',
    '<imports><import path="part.xml"/><import path="part.xml"/></imports>',
    '<imports><import path="nul\x01.xml"/></imports>',
    '<sources><source id="s::js" url="javascript:alert(1)" title="x"/></sources>',
    '<phrases><phrase pattern="(a|aa)+$"><variant value="x"/></phrase></phrases>',
    '<phrases><phrase pattern="(?P&lt;x&gt;"><variant value="$9"/></phrase></phrases>',
    '<phrases><phrase pattern="^What is (.+)\\?$"><variant value="$99999999999999999999"/></phrase></phrases>',
    '<samples><sample><prompt id="pr::cat"/><code id="code::hi" indent="\u00b2"/></sample></samples>',
    '<samples><sample><prompt id="pr::cat"/><code id="code::hi" indent="' + "9" * 4301 + '"/></sample></samples>',
    '<samples><sample><prompt id="pr::cat"/><code id="code::hi" indent="-1"/></sample></samples>',
    '<samples><sample ' + " ".join(f'a{i}="x"' for i in range(3000)) + '/></samples>',
    '<system-prompts><system id="x">' + "<b>" * 300 + "</b>" * 300 + '</system></system-prompts>',
    '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>',
    '<?xml version="1.0" encoding="latin-1"?>',
    '<beyond-scope system="sys::main" response="re::cat" pets="true"><topic value="x" prefix="is"/></beyond-scope>',
    '<samples><sample-ids prompt="pr::cat" response="re::cat" source="s::js"/></samples>',
    '<sources><source id="s::js" url="javascript:alert(1)" title="x"/></sources>',
]


def _insert_snippet(main: str, snip: str) -> str:
    """``snip`` in ``main``: a section's content goes into that section when it exists."""
    if snip.startswith("<?xml"):
        return snip + main.split("?>", 1)[1]
    if snip.startswith("<!DOCTYPE"):
        return main.replace("<train>", snip + "<train>", 1)
    tag = snip[1:snip.index(">")].split()[0]
    inner = snip[len(tag) + 2:-(len(tag) + 3)]
    if f"<{tag}>" in main:
        i = main.index(f"<{tag}>") + len(tag) + 2
        return main[:i] + inner + main[i:]
    i = main.index("<train>") + len("<train>")
    return main[:i] + snip + main[i:]


def _gen_trainxml(fx: Fixture, rng: random.Random) -> Dict[str, Any]:
    main = fx.train_xml
    extra: Dict[str, bytes] = {"part.xml": fx.part_xml.encode()}
    r = rng.random()
    if r < 0.6:
        for snip in rng.sample(_XML_SNIPPETS, rng.choice([1, 1, 2])):
            if "loop.xml" in snip:
                extra["__symlink__loop.xml"] = b"loop.xml"
            if "deep0.xml" in snip:
                depth = rng.choice([70, 1100])
                for d in range(depth):
                    extra[f"deep{d}.xml"] = (f'<train><imports><import path="deep{d + 1}.xml"/>'
                                             f'</imports></train>').encode()
            main = _insert_snippet(main, snip)
        data = main.encode("utf-8", "surrogatepass")
    elif r < 0.7:
        extra["part.xml"] = mutate_bytes(fx.part_xml.encode(), rng)
        data = main.encode()
    else:
        data = mutate_bytes(main.encode(), rng)
    return {"files": dict(extra, **{"train.xml": data}),
            "allow_outside": rng.random() < 0.5}


def _gen_memory(fx: Fixture, rng: random.Random) -> Dict[str, Any]:
    r = rng.random()
    if r < 0.3:
        return {"files": {"memory.db": mutate_bytes(fx.db_bytes, rng, rng.choice([1, 4, 32]))}}
    stmts = [
        "UPDATE messages SET tokens = '[1, 2' WHERE id = 2",
        "UPDATE messages SET tokens = '{\"a\": 1}' WHERE id = 2",
        "UPDATE messages SET tokens = '[-5, 3]' WHERE id = 2",
        "UPDATE messages SET tokens = '[1e400]' WHERE id = 2",
        "UPDATE messages SET tokens = '[99999999999999999999]' WHERE id = 2",
        "UPDATE messages SET tokens = '" + "[" * 100000 + "' WHERE id = 2",
        "UPDATE messages SET tokens = x'ff00' WHERE id = 2",
        "UPDATE messages SET tokens = 12 WHERE id = 2",
        "UPDATE messages SET content = x'80' WHERE id = 1",
        "UPDATE messages SET content = 5 WHERE id = 1",
        "UPDATE conversations SET system = 7",
        "UPDATE conversations SET title = x'00ff'",
        "UPDATE conversations SET created = 'yesterday'",
        "PRAGMA writable_schema = 1; UPDATE sqlite_master SET sql = replace(sql, 'role', 'rol') "
        "WHERE name = 'messages'",
        "PRAGMA user_version = 7",
        "PRAGMA user_version = -3",
        "PRAGMA user_version = 0",
        "DROP TABLE messages",
        "ALTER TABLE messages ADD COLUMN extra TEXT",
        "ALTER TABLE conversations RENAME COLUMN title TO name",
        "CREATE TABLE foreign_stuff (a)",
        "DROP TABLE messages; DROP TABLE conversations; CREATE TABLE t (x); PRAGMA user_version = 0",
        "DROP TABLE messages; CREATE TABLE messages (id INTEGER)",
        "DROP INDEX messages_by_conversation",
    ]
    picked = rng.sample(stmts, rng.choice([1, 1, 2]))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.db"
        p.write_bytes(fx.db_bytes)
        con = sqlite3.connect(str(p), isolation_level=None)
        for s in picked:
            try:
                con.executescript(s)
            except sqlite3.Error:
                pass
        con.close()
        data = p.read_bytes()
    if rng.random() < 0.2:
        data = mutate_bytes(data, rng, 2)
    return {"files": {"memory.db": data}, "sql": picked}


# ----------------------------------------------------------------------------- cli, probes

#: hostile command-line numbers (strings): huge, negative, zero, not finite, not ASCII, empty
CLI_NUMBERS = ["0", "-1", "1", "-0", "2", str(2 ** 31), str(2 ** 63), str(-(2 ** 63)),
               str(2 ** 64), "9" * 4300, "9" * 5000, "1" + "0" * 400, "nan", "-nan", "inf",
               "-inf", "Infinity", "\u00b2", "1e400", "-1e400", "1e-400", "", " ", "0x10",
               "1_000", "\u0663", "\uff11\uff12", "1.5", "-0.5", "0.0", "\x00", "--",
               "4e9", "65536", "99999"]
_GEN_INT = ["-n", "--n-predict", "-c", "--ctx-size", "-t", "--threads", "-s", "--seed",
            "--top-k", "--repeat-last-n"]
_GEN_FLOAT = ["--temp", "--top-p", "--min-p", "--repeat-penalty"]
_TRAIN_NUM = ["--val-fraction", "--max-xml-mb", "--seed", "--threads", "--dim", "--layers",
              "--heads", "--kv-heads", "--context", "--steps", "--epochs", "--batch-size",
              "--grad-accum", "--lr", "--warmup-steps", "--weight-decay", "--val-interval",
              "--aim-loss", "--checkpoint-interval"]
_SERVE_NUM = ["--port", "--parallel", "--queue", "--max-tokens", "--max-body-kb", "--timeout",
              "-t", "--threads"]
_EVAL_NUM = ["--max-cases", "--min-recall", "-t", "--threads"]
_UNKNOWN = ["--zzz", "-Z", "--top_k", "--temp=", "---", "--n-predict=5=5", "--\u00e9", "-nn",
            "--top-k=--", "-n--", "--stop=--"]
#: names an error may use for a flag instead of its spelling (``top_k must be ...``)
_FLAG_NAMES = {"-n": ["max_tokens", "n-predict"], "--n-predict": ["max_tokens"],
               "-c": ["ctx-size", "context"], "--ctx-size": ["context"],
               "-t": ["threads"], "-s": ["seed"], "--temp": ["temperature"],
               "--repeat-penalty": ["repeat_penalty", "repeat-penalty"]}


def _valid_int(text: str) -> Optional[int]:
    try:
        v = int(text)
    except ValueError:
        return None
    return v if v >= 0 else None


def _gen_cli(fx: Fixture, rng: random.Random) -> Dict[str, Any]:
    """argv for ``poppins.cli.main`` with {model}, {out}, {xml}, {dir} placeholders."""
    cmd = rng.choice(["infer", "infer", "tokenize", "eval", "train", "serve", "chat"])
    if cmd == "infer":
        argv = ["infer", "-m", "{model}", "-p", rng.choice(["What is a cat?", "", "\u00e9\ud800"]),
                "-n", "4", "-t", "1"]
        pool = _GEN_INT + _GEN_FLOAT
    elif cmd == "chat":
        argv = ["chat", "-m", "{model}", "--db", "{dir}/memory.db", "-n", "2", "-t", "1"]
        pool = _GEN_INT + _GEN_FLOAT
    elif cmd == "tokenize":
        argv = ["tokenize", "-m", "{out}", "-p", rng.choice(["What is a cat?", "", "a\ud800b",
                                                             "<sample>x</sample>"])]
        argv += rng.choice([[], ["--plain"], ["--ids-only"]])
        pool = []
    elif cmd == "eval":
        argv = ["eval", "-m", "{model}", "-i", "{xml}", "--max-cases", "1", "-t", "1"]
        argv += rng.choice([[], ["--json"], ["--probes", "{probes}"]])
        pool = _EVAL_NUM
    elif cmd == "train":
        argv = ["train", "--data-only", "-i", "{xml}", "-o", "{dir}/out"]
        pool = _TRAIN_NUM
    else:   # serve: a model that does not exist, so nothing ever binds a port
        argv = ["serve", "-m", "{dir}/no-such-model", "--port", "0"]
        pool = _SERVE_NUM
    n_num = rng.choice([1, 1, 2, 3]) if pool else 0
    if cmd == "chat" or cmd == "serve":
        n_num = max(1, n_num)
    for _ in range(n_num):
        flag = rng.choice(pool)
        val = rng.choice(CLI_NUMBERS)
        if flag == "--max-cases" and _valid_int(val) not in (None, 1):
            val = "1"   # 0 and big counts mean every case: slow, not hostile
        if rng.random() < 0.15:
            argv += [f"{flag}={val}"]
        else:
            argv += [flag, val]
    r = rng.random()
    if r < 0.1:
        argv.insert(rng.randrange(1, len(argv) + 1), rng.choice(_UNKNOWN))
    elif r < 0.18 and len(argv) > 2:   # a flag's value goes missing
        argv = argv[:-1]
    elif r < 0.22:
        argv.insert(rng.randrange(1, len(argv) + 1), rng.choice(["-m", "-p", "-i"]))
    return {"files": {}, "argv": argv, "stdin": ""}


def _probe_snippets() -> List[str]:
    return [
        '<paraphrase expect="pr::cat"></paraphrase>',
        '<paraphrase>no expect</paraphrase>',
        '<paraphrase expect="">x</paraphrase>',
        '<paraphrase expect="pr::cat" zzz="1">x</paraphrase>',
        '<paraphrase expect="pr::cat">' + "x" * 100000 + '</paraphrase>',
        '<paraphrase expect="pr::cat"><b>x</b></paraphrase>',
        '<paraphrase expect="pr::cat">' + "<b>" * 300 + "</b>" * 300 + '</paraphrase>',
        '<paraphrase expect="pr::\u00e9\u0000">x</paraphrase>',
        '<paraphrase expect="' + "p" * 5000 + '">x</paraphrase>',
        '<question expect="pr::cat">wrong section</question>',
        '<question>&amp;&lt;&#0;</question>',
        '<question>&#x10FFFF;&#xD800;</question>',
        '<question system="' + "s" * 70000 + '">x</question>',
        '<question>' + "q " * 40000 + '</question>',
        '<unknown/>',
        '<!-- c --><?pi x?>',
        '<![CDATA[<paraphrase>]]>',
        '<question xmlns="urn:x">x</question>',
        '<question xml:lang="en">x</question>',
        '<question ' + " ".join(f'a{i}="x"' for i in range(3000)) + '>x</question>',
    ]


def _gen_probes(fx: Fixture, rng: random.Random) -> Dict[str, Any]:
    xml = fx.probes_xml
    r = rng.random()
    if r < 0.4:
        for snip in rng.sample(_probe_snippets(), rng.choice([1, 1, 2])):
            where = rng.choice(["<paraphrases>", "<off-topic>", "<probes>", "</probes>"])
            i = xml.index(where) + (len(where) if not where.startswith("</") else 0)
            xml = xml[:i] + snip + xml[i:]
        data = xml.encode("utf-8", "surrogatepass")
    elif r < 0.55:
        data = rng.choice([
            xml.replace("<probes>", "<train>").replace("</probes>", "</train>"),
            xml.replace("<probes>", '<!DOCTYPE probes [<!ENTITY a "aaaa">]><probes>'),
            xml.replace("<probes>", '<!DOCTYPE probes SYSTEM "/etc/passwd"><probes>'),
            xml.replace("<probes>", "<probes>" + "<paraphrases>" * 5),
            xml.replace("UTF-8", rng.choice(["latin-1", "utf-16", "ebcdic", "x"])),
            xml.replace("<paraphrases>", "<paraphrases>" + '<paraphrase expect="pr::c">x'
                        '</paraphrase>' * rng.choice([500, 20000])),
            xml.replace("<probes>", '<probes a="1">'),
            xml.split("<probes>")[0] + "<probes/>",
            "", "\ufeff" + xml, xml + "<probes/>", xml + "\x00",
            xml.replace("\n", "\r"),
        ]).encode("utf-8", "surrogatepass")
        if rng.random() < 0.2:
            data = data.decode("utf-8").encode("utf-16")
    else:
        data = mutate_bytes(xml.encode("utf-8"), rng)
    return {"files": {"probes.xml": data}}


# ----------------------------------------------------------------------------- running

class Hang(BaseException):
    pass


def _on_alarm(*_):
    raise Hang()


def _materialize(case, folder: Path) -> Dict[str, Path]:
    paths = {}
    for name, data in case["files"].items():
        if name.startswith("__symlink__"):
            link = folder / name[len("__symlink__"):]
            os.symlink(data.decode(), link)
            continue
        p = folder / name
        p.write_bytes(data)
        paths[name] = p
    return paths


def _use_model(path: Path) -> None:
    from poppins.engine.render import Renderer
    from poppins.engine.runtime import Engine

    eng = Engine.load(path, threads=1)
    tok = eng.tokenizer
    ids = [int(i) for i in tok.encode("What is a cat?")][: max(1, eng.context_length - 1)]
    sess = eng.session(threads=1)
    logits = sess.forward(ids)
    r = Renderer(tok, sources=eng.sources)
    for t in list(ids[:3]) + [int(logits.reshape(-1).argmax())]:
        r.feed(t)
    r.text(final=True)


def _use_checkpoint(path: Path) -> None:
    from poppins.model.config import ModelConfig
    from poppins.model.model import Model
    from poppins.training.checkpoint import load_checkpoint
    from poppins.training.config import TrainConfig

    header, arrays = load_checkpoint(path)
    TrainConfig.from_dict(dict(header["train_config"]))
    model = Model(ModelConfig.from_dict(header["model_config"]), threads=1, init=False)
    model.flat_params[...] = arrays["params"]
    int(header["adam_t"]), int(header["step"]), int(header["epoch"]), int(header["row"])
    [list(h) for h in header.get("history", [])]


def _use_tokenizer(path: Path, text: str) -> None:
    from poppins.tokenizer import Tokenizer

    tok = Tokenizer.from_file(path)
    ids = tok.encode(text)
    tok.decode(ids)
    tok.to_json_str()


def _use_memory(path: Path, case: Dict[str, Any]) -> None:
    from poppins.memory import Memory

    mem = Memory(path)
    case["opened"] = True   # accepted as ours: later writes are normal use
    with mem:
        for c in mem.list_conversations():
            mem.messages(c["id"], with_tokens=True)
            mem.turns(c["id"])
        cid = mem.new_conversation(system="s")
        mem.add_turn(cid, "u", "a", tokens=[1, 2])
        mem.messages(cid, with_tokens=True)


def _use_trainxml(folder: Path, out: Path, allow_outside: bool) -> None:
    from poppins.datastage import prepare_data

    prepare_data(folder / "train.xml", out, log=None, allow_outside_imports=allow_outside)


def _use_cli(case: Dict[str, Any], fx: Fixture, folder: Path) -> Tuple[str, str]:
    """Run ``poppins.cli.main`` in-process: ("ok" | "error" | "fail", detail)."""
    import contextlib
    import io

    from poppins.cli import main as cli_main

    subst = {"{model}": str(fx.model_path), "{out}": str(fx.out),
             "{xml}": str(fx.root / "src" / "train.xml"), "{dir}": str(folder),
             "{probes}": str(fx.root / "probes.xml")}
    argv = []
    for a in case["argv"]:
        for k, v in subst.items():
            a = a.replace(k, v)
        argv.append(a)
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(case.get("stdin", ""))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception as exc:   # noqa: B902 - nothing may escape main()
                return "fail", (f"an exception escaped main({argv!r}):\n"
                                + "".join(traceback.format_exception(exc))[-2500:])
    finally:
        sys.stdin = old_stdin
    text = err.getvalue()
    where = f"argv {argv!r}:\n{text[-2500:]}"
    if code == 1 and "below --min-recall" in text and len(text.splitlines()) <= 21:
        return "ok", ""   # eval's documented verdict, not an error
    if code not in (0, 2):
        return "fail", f"exit code {code}; {where}"
    if "Traceback" in text:
        return "fail", f"a traceback; {where}"
    if code == 0:
        return "ok", ""
    lines = text.strip().splitlines()
    if not lines or len(lines) > 21:
        return "fail", f"{len(lines)} lines of error output; {where}"
    names = set()
    for a in argv:
        if a.startswith("-") and len(a) > 1:
            flag = a.split("=", 1)[0]
            names.update([flag, flag.lstrip("-"), flag.lstrip("-").replace("-", "_")])
            names.update(_FLAG_NAMES.get(flag, []))
        elif "/" in a:
            names.add(a)
    names.update(["the following arguments are required", "unrecognized arguments"])
    if not any(n and n in text for n in names):
        return "fail", f"the error names no flag or file; {where}"
    return "error", text.strip()[:300]


def run_case(kind: str, case: Dict[str, Any], fx: Fixture, work: Path,
             timeout: float = 10.0) -> Tuple[str, str]:
    """("ok" | "error" | "fail", detail) of one case; "error" is a clean PoppinsError."""
    from poppins.errors import PoppinsError

    folder = Path(tempfile.mkdtemp(dir=work))
    out = None
    try:
        paths = _materialize(case, folder)
        before = {n: p.read_bytes() for n, p in paths.items()}
        named = [str(p) for p in paths.values()] + list(paths)
        if kind == "trainxml":
            out = folder / "out"
            shutil.copytree(fx.out, out)
        if kind == "cli" and not (fx.root / "probes.xml").exists():
            (fx.root / "probes.xml").write_text(fx.probes_xml, encoding="utf-8")
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        t0 = time.monotonic()
        try:
            cli_result = None
            if kind == "cli":
                cli_result = _use_cli(case, fx, folder)
            elif kind == "probes":
                from poppins.evaluation import read_probes
                read_probes(paths["probes.xml"])
            elif kind == "model":
                _use_model(paths["model.poppins"])
            elif kind == "checkpoint":
                _use_checkpoint(paths["last.ckpt"])
            elif kind == "tokenizer":
                _use_tokenizer(paths["tokenizer.json"], case["text"])
            elif kind == "memory":
                _use_memory(paths["memory.db"], case)
            else:
                _use_trainxml(folder, out, case.get("allow_outside", True))
            outcome, detail = cli_result or ("ok", "")
        except PoppinsError as exc:
            msg = str(exc)
            if kind == "tokenizer" and "text to encode" in msg:
                outcome, detail = "error", msg           # the text, not the file, is bad
            elif any(n in msg for n in named) or (kind == "trainxml" and "--max-xml-mb" in msg):
                outcome, detail = "error", msg
            else:
                outcome, detail = "fail", f"PoppinsError not naming the file: {msg}"
        except Hang:
            outcome, detail = "fail", f"hang: over {timeout:g} s"
        except BaseException as exc:   # noqa: B902 - anything else is the failure we look for
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome, detail = "fail", "".join(traceback.format_exception(exc))[-3000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        took = time.monotonic() - t0
        if outcome != "fail" and took > timeout:
            outcome, detail = "fail", f"took {took:.1f} s"
        if outcome == "error" and not case.get("opened"):
            after = {n: p.read_bytes() for n, p in paths.items()}
            if after != before:
                outcome, detail = "fail", f"a refused input was modified: {detail}"
            elif out is not None and _tree_bytes(out) != fx.out_bytes:
                outcome, detail = "fail", f"the previous output changed: {detail}"
        return outcome, detail
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- driver

def _worker(kind: str, seed: int, start: int, stop: int, timeout: float, fixture: str) -> int:
    """Run cases [start, stop) of ``kind``; one JSON line per case on stdout."""
    fx = make_fixture(fixture)
    work = Path(tempfile.mkdtemp(prefix="fuzz-work-"))
    try:
        for i in range(start, stop):
            rng = random.Random(f"{seed}:{kind}:{i}")
            case = gen_case(kind, fx, rng)
            outcome, detail = run_case(kind, case, fx, work, timeout)
            print(json.dumps({"i": i, "outcome": outcome, "detail": detail[:4000]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _drive(kind: str, seed: int, n: int, timeout: float, fixture: str, verbose: bool):
    """Run ``n`` cases of ``kind`` in a worker process, restarting it after a crash."""
    counts = {"ok": 0, "error": 0, "fail": 0, "crash": 0}
    failures: List[str] = []
    i = 0
    while i < n:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--seed",
               str(seed), "--start", str(i), "--stop", str(n), "--timeout", str(timeout),
               "--fixture", fixture]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        last = i - 1
        # a watchdog for hangs the in-worker alarm cannot interrupt (C code that never
        # returns): no case reported for 3x the timeout (plus the fixture's build) -> kill
        progress = [time.monotonic() + 60.0]
        stop = threading.Event()

        def watch():
            while not stop.wait(1.0):
                if time.monotonic() - progress[0] > 3 * timeout:
                    proc.kill()
                    return
        threading.Thread(target=watch, daemon=True).start()
        for line in proc.stdout:
            progress[0] = time.monotonic()
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            last = rec["i"]
            counts[rec["outcome"]] += 1
            if rec["outcome"] == "fail":
                failures.append(f"{kind} case {last} (seed {seed}): {rec['detail']}")
                if verbose:
                    print(failures[-1], file=sys.stderr)
        rc = proc.wait()
        stop.set()
        i = last + 1
        if rc != 0 and i < n:
            counts["crash"] += 1
            failures.append(f"{kind} case {i} (seed {seed}): worker died with code {rc} "
                            "(a crash, or killed by the watchdog after a hang)")
            print(failures[-1], file=sys.stderr)
            i += 1
    return counts, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="total cases over the kinds")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fixture", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(a.worker, a.seed, a.start, a.stop, a.timeout, a.fixture)
    total_w = sum(WEIGHTS[k] for k in a.kinds)
    plan = {k: max(1, round(a.cases * WEIGHTS[k] / total_w)) for k in a.kinds}
    t0 = time.monotonic()
    ok = True
    with tempfile.TemporaryDirectory(prefix="fuzz-fixture-") as d:
        make_fixture(d)   # built once; the workers rebuild their own copy deterministically
        print(f"fuzz: {sum(plan.values())} cases, seed {a.seed}, {a.timeout:g} s per case")
        for kind in a.kinds:
            t1 = time.monotonic()
            counts, failures = _drive(kind, a.seed, plan[kind], a.timeout,
                                      str(Path(d) / kind), a.verbose)
            ok = ok and not failures
            print(f"  {kind:10s} {plan[kind]:7d} cases: {counts['ok']:6d} accepted, "
                  f"{counts['error']:6d} clean errors, {counts['fail']} failures, "
                  f"{counts['crash']} crashes  [{time.monotonic() - t1:.0f} s]", flush=True)
            for f in failures[:5]:
                print("    " + f.replace("\n", "\n    ")[:2000])
    import resource

    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10
    print(f"fuzz: {'PASS' if ok else 'FAIL'} in {time.monotonic() - t0:.0f} s "
          f"(peak RSS of a worker: {rss} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""poppins.Memory: conversations in SQLite (WAL), consistent when a writer is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from poppins.errors import PoppinsError
from poppins.memory import Memory, fit_recent_turns

REPO = Path(__file__).resolve().parent.parent


def test_conversation_round_trip(tmp_path):
    with Memory(tmp_path / "m.db") as mem:
        cid = mem.new_conversation(system="Be brief.")
        mem.add_turn(cid, "What is poppins?", "A trainer.")
        mem.add_turn(cid, "On a CPU?", "Yes.")
        assert mem.messages(cid) == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is poppins?"},
            {"role": "assistant", "content": "A trainer."},
            {"role": "user", "content": "On a CPU?"},
            {"role": "assistant", "content": "Yes."}]
        assert mem.turns(cid) == [("What is poppins?", "A trainer."), ("On a CPU?", "Yes.")]
        other = mem.new_conversation()
        listing = mem.list_conversations()
        assert {c["id"]: c["turns"] for c in listing} == {cid: 2, other: 0}
        assert next(c for c in listing if c["id"] == cid)["title"] == "What is poppins?"
        assert mem._query("PRAGMA journal_mode")[0][0] == "wal"
    with Memory(tmp_path / "m.db") as mem:          # reopened: resumes
        assert mem.turns(cid)[-1] == ("On a CPU?", "Yes.")
        mem.delete(cid)
        assert not mem.exists(cid)
        assert mem._query("SELECT COUNT(*) FROM messages")[0][0] == 0   # cascade
        with pytest.raises(PoppinsError, match="no conversation"):
            mem.delete(cid)
        with pytest.raises(PoppinsError, match="no conversation"):
            mem.add_turn("nope", "a", "b")


def test_not_a_database(tmp_path):
    p = tmp_path / "m.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PoppinsError, match="cannot open the memory database"):
        Memory(p)


def test_threads_share_one_memory(tmp_path):
    with Memory(tmp_path / "m.db") as mem:
        cids = [mem.new_conversation() for _ in range(8)]

        def work(cid):
            for i in range(20):
                mem.add_turn(cid, f"q{i}", f"a{i}")

        ts = [threading.Thread(target=work, args=(c,)) for c in cids]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert all(len(mem.turns(c)) == 20 for c in cids)
        assert mem.integrity_ok()


WRITER = """
import sys
from poppins.memory import Memory
mem = Memory(sys.argv[1])
cid = mem.new_conversation(system="s")
print(cid, flush=True)
i = 0
while True:
    mem.add_turn(cid, "question %d " % i + "x" * 2000, "answer %d " % i + "y" * 2000)
    i += 1
"""


def test_killed_writer_leaves_a_consistent_database(tmp_path):
    db = tmp_path / "m.db"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], env=env,
                            stdout=subprocess.PIPE, text=True)
    cid = proc.stdout.readline().strip()
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Memory(db) as mem:
        assert mem.integrity_ok()
        turns = mem.turns(cid)
        assert len(turns) >= 1
        msgs = mem.messages(cid)[1:]
        assert len(msgs) % 2 == 0 and all(m["role"] == ("user", "assistant")[i % 2]
                                          for i, m in enumerate(msgs))
        assert all(u.split()[1] == a.split()[1] for u, a in turns)   # whole turns only
        mem.add_turn(cid, "after", "the crash")                       # and it resumes
        assert mem.turns(cid)[-1] == ("after", "the crash")


def test_fit_recent_turns_drops_whole_old_turns():
    turns = [("a" * 10, "b" * 10), ("c" * 5, "d" * 5), ("e", "f")]
    cost = lambda t: len(t[0]) + len(t[1])
    assert fit_recent_turns(turns, cost, 100) == turns
    assert fit_recent_turns(turns, cost, 12) == turns[1:]
    assert fit_recent_turns(turns, cost, 11) == turns[2:]
    assert fit_recent_turns(turns, cost, 1) == []


# ---------------------------------------------------------------- issue 13: hostile files

def _db_with_a_turn(path):
    with Memory(path) as mem:
        cid = mem.new_conversation(system="s")
        mem.add_turn(cid, "q", "a", tokens=[1, 2, 3])
    return cid


def _sql(path, script):
    import sqlite3

    con = sqlite3.connect(str(path), isolation_level=None)
    con.executescript(script)
    con.close()


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path):
    p = tmp_path / "other.db"
    _sql(p, "CREATE TABLE invoices (id INTEGER, total REAL); INSERT INTO invoices VALUES (1, 2.5);")
    before = p.read_bytes()
    with pytest.raises(PoppinsError, match=r"other\.db: not a poppins memory database .*'invoices'"):
        Memory(p)
    assert p.read_bytes() == before


@pytest.mark.parametrize("script,pattern", [
    ("ALTER TABLE messages RENAME COLUMN content TO body", r"table 'messages' has a different schema"),
    ("DROP TABLE conversations", r"table 'conversations' has a different schema"),
    ("PRAGMA user_version = 9", r"version 9"),
])
def test_different_schema_is_refused(tmp_path, script, pattern):
    p = tmp_path / "m.db"
    _db_with_a_turn(p)
    _sql(p, "PRAGMA foreign_keys=OFF;" + script)
    with pytest.raises(PoppinsError, match=r"m\.db.*" + pattern):
        Memory(p)


@pytest.mark.parametrize("value", ["'[1, 2'", "'{\"a\": 1}'", "'[-1]'", "'[1.5]'", "'[true]'",
                                   "x'ff'", "7", "'" + "[" * 100_000 + "'"])
def test_invalid_stored_tokens_name_the_field(tmp_path, value):
    p = tmp_path / "m.db"
    cid = _db_with_a_turn(p)
    _sql(p, f"UPDATE messages SET tokens = {value} WHERE role = 'assistant'")
    with Memory(p) as mem:
        assert mem.messages(cid)[-1]["content"] == "a"     # the text alone is still readable
        with pytest.raises(PoppinsError, match=r"m\.db: memory database table messages, field tokens"):
            mem.messages(cid, with_tokens=True)


def test_wrong_types_in_stored_rows(tmp_path):
    p = tmp_path / "m.db"
    cid = _db_with_a_turn(p)
    _sql(p, "UPDATE messages SET content = x'80' WHERE role = 'user'")
    with Memory(p) as mem:
        with pytest.raises(PoppinsError, match=r"field content"):
            mem.messages(cid)
    _sql(p, "UPDATE messages SET content = 'q'; UPDATE conversations SET title = x'00'")
    with Memory(p) as mem:
        with pytest.raises(PoppinsError, match=r"table conversations, field title"):
            mem.list_conversations()


def test_damaged_pages_are_a_clean_error(tmp_path):
    import random

    p = tmp_path / "m.db"
    for k in range(20):
        _db_with_a_turn(p)
    good = p.read_bytes()
    rng = random.Random(5)
    errors = 0
    for trial in range(40):
        raw = bytearray(good)
        for _ in range(8):
            raw[rng.randrange(100, len(raw))] = rng.randrange(256)
        p.write_bytes(raw)
        for side in (tmp_path / "m.db-wal", tmp_path / "m.db-shm"):
            side.unlink(missing_ok=True)
        try:
            with Memory(p) as mem:
                for c in mem.list_conversations():
                    mem.messages(c["id"], with_tokens=True)
        except PoppinsError as exc:
            assert str(p) in str(exc)
            errors += 1
    assert errors > 0

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

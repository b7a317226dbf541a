"""The terminal chat driven through a pseudo-terminal: commands, Ctrl+C mid-answer, multi-line
input, an empty Enter, resuming (the earlier turns shown)."""
from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path

import pytest

from poppins.memory import Memory
from test_server import ANSWERS, FIRST, SYSTEM, trained  # noqa: F401  (fixture)

pty = pytest.importorskip("pty")
REPO = Path(__file__).resolve().parent.parent


class Term:
    """A child process on a pty, with expect()."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:                      # the child
            os.execvpe(sys.executable, [sys.executable, "-m", "poppins", *argv],
                       dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color"))
        self.buf = b""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Waits for ``text`` in the output after what earlier expects consumed; returns the
        output up to and including it."""
        want = text.encode()
        end = time.monotonic() + timeout
        while want not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; output so far: {self.buf[-2000:]!r}")
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not seen before the end: {self.buf!r}")
                self.buf += chunk
        i = self.buf.index(want) + len(want)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen.decode("utf-8", "replace")

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                while os.read(self.fd, 65536):
                    pass
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


def saved(db, cid: str, n: int, timeout: float = 60) -> None:
    """Waits until conversation ``cid`` holds ``n`` turns."""
    deadline = time.monotonic() + timeout
    while True:
        with Memory(db) as mem:
            if len(mem.turns(cid)) >= n:
                return
        assert time.monotonic() < deadline, f"turn {n} was not saved within {timeout:.0f} s"
        time.sleep(0.1)


def test_chat_in_a_terminal(trained, tmp_path):
    db = tmp_path / "memory.db"
    t = Term(["chat", "-m", str(trained), "--db", str(db), "-t", "1", "--system", SYSTEM,
              "--temp", "0"])
    t.expect("/help for commands")
    t.expect("> ")
    t.send("/help\r")
    assert "/system TEXT" in t.expect("/quit")
    t.expect("> ")
    t.send("/frobnicate\r")
    t.expect("unknown command /frobnicate")
    t.expect("> ")
    t.send("\r")                                        # an empty Enter does not quit
    t.expect("> ")
    t.send(FIRST + "\r")
    t.expect(ANSWERS[FIRST])
    t.expect("> ")
    t.send("/quit\r")
    assert t.wait() == 0
    # Ctrl+C mid-answer: once the line is echoed, output is held with XOFF (the answer's next
    # write blocks), then ^C interrupts the answer; the session goes on, the stopped turn is
    # not kept.  A long rambling answer (high temperature) leaves time for the XOFF.
    from poppins.api import Model
    m = Model.load(trained, threads=1)
    kw = dict(temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=200)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "tell me more"}]
    seed = next(s for s in range(60) if len(m.chat(msgs, seed=s, **kw).tokens) >= 200)
    [conv] = Memory(db).list_conversations()
    t = Term(["chat", "-m", str(trained), "--db", str(db), "-t", "1", "--temp", "3",
              "--top-k", "0", "--top-p", "1", "--min-p", "0", "-s", str(seed), "-n", "200",
              "--conversation", conv["id"]])
    t.expect("/help for commands")
    t.expect("> ")
    t.send("tell me more\r")
    t.expect("tell me more\r\n")
    t.send("\x13")
    time.sleep(1.0)
    t.send("\x03")
    t.send("\x11")
    t.expect("[stopped")
    t.expect("> ")
    t.send("/system\r")                    # the session goes on
    t.expect(f"[system] {SYSTEM}")
    t.expect("> ")
    t.send(FIRST + "\r")
    saved(db, conv["id"], 2)               # a rambling answer: wait for it to be saved
    t.send("/quit\r")
    assert t.wait() == 0
    # greedy again: a multi-line block and a paste are one message each
    t = Term(["chat", "-m", str(trained), "--db", str(db), "-t", "1", "--temp", "0",
              "--conversation", conv["id"]])
    t.expect("/help for commands")
    t.expect("> ")
    t.send("/history\r")
    t.expect(ANSWERS[FIRST])
    t.expect("> ")
    t.send('"""\r')
    t.send("What is one half\r")
    t.send("plus one quarter?\r")
    t.send('"""\r')
    t.expect('"""\r\n')
    # What is typed while an answer is printed is echoed early by the terminal, so the output
    # alone cannot tell when the chat reads again: wait for the turn to be saved (it is saved
    # before the next prompt), or a slow machine folds the next input into the paste below.
    saved(db, conv["id"], 3)
    t.send("Why?\rWhy not?\r")              # pasted at once: one message
    saved(db, conv["id"], 4)
    t.send("/list\r")
    t.expect("4 turns")
    t.expect("> ")
    t.send("/quit\r")
    assert t.wait() == 0
    with Memory(db) as mem:
        [conv] = mem.list_conversations()
        turns = mem.turns(conv["id"])
    assert [u for u, _ in turns] == [FIRST, FIRST, "What is one half\nplus one quarter?",
                                     "Why?\nWhy not?"]
    assert turns[0][1] == ANSWERS[FIRST]
    # resumed: the earlier turns are shown, and the conversation goes on
    t = Term(["chat", "-m", str(trained), "--db", str(db), "-t", "1", "--temp", "0",
              "--conversation", conv["id"]])
    shown = t.expect("/help for commands")
    assert f"> {FIRST}" in shown and ANSWERS[FIRST] in shown and SYSTEM in shown
    t.expect("> ")
    t.send("/new\r")
    t.expect("conversation ")
    t.expect("> ")
    t.send("\x04")                                      # Ctrl+D leaves
    assert t.wait() == 0
    with Memory(db) as mem:
        assert len(mem.list_conversations()) == 2

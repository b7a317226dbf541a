"""Conversation memory in SQLite: conversations and their messages, shaped like OpenAI messages.

    from poppins import Memory
    with Memory(".poppins/memory.db") as mem:
        cid = mem.new_conversation(system="You are Poppins.")
        mem.add_turn(cid, "What is poppins?", "A tool that trains small ternary models.")
        mem.messages(cid)   # [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]

The database uses WAL mode.  A turn (the user's message and the answer) is written in one
transaction once the answer is complete, so a process killed mid-answer leaves the database
consistent: the conversation resumes from its last complete turn.  One Memory may be shared
by threads (a lock serialises its connection); several processes may open the same file.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import PoppinsError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id       TEXT PRIMARY KEY,
    title    TEXT NOT NULL DEFAULT '',
    system   TEXT,
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role             TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content          TEXT NOT NULL,
    tokens           TEXT,          -- an answer's generated token ids (JSON), thoughts included
    created          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


#: table -> the columns (name, declared type) this schema version has, in order
_COLUMNS = {
    "conversations": [("id", "TEXT"), ("title", "TEXT"), ("system", "TEXT"), ("created", "REAL"),
                      ("updated", "REAL")],
    "messages": [("id", "INTEGER"), ("conversation_id", "TEXT"), ("role", "TEXT"),
                 ("content", "TEXT"), ("tokens", "TEXT"), ("created", "REAL")],
}
#: stored token ids are non-negative and below this (the model checks its own vocabulary)
MAX_TOKEN_ID = 1 << 31


def _guard(method):
    """Turn an SQLite error inside ``method`` into a PoppinsError naming the file (a damaged
    or foreign file may be noticed only when a page is read)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise PoppinsError(f"{self.path}: the memory database is damaged or not poppins' "
                               f"({exc})") from None
    return wrapper


class Memory:
    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            # every check reads only, so a file that is not ours is left byte-identical
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION or version < 0:
                raise PoppinsError(f"{self.path}: memory database version {version} is not one "
                                   f"this poppins understands ({SCHEMA_VERSION})")
            fresh = False
            if version == 0:
                have = self._check_foreign()
                self._check_schema(only=have)
                fresh = len(have) < len(_COLUMNS)
            else:
                self._check_schema()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if fresh:   # CREATE ... IF NOT EXISTS: safe when two processes race here
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._check_schema()
        except (sqlite3.Error, OSError, UnicodeDecodeError) as exc:
            self._close_quietly()
            raise PoppinsError(f"{self.path}: cannot open the memory database ({exc})") from None
        except PoppinsError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def _check_foreign(self) -> List[str]:
        """A version-0 file that already holds tables other than ours is someone else's;
        returns which of ours it holds."""
        names = [r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        foreign = [n for n in names if n not in _COLUMNS]
        if foreign:
            raise PoppinsError(f"{self.path}: not a poppins memory database (it holds the table "
                               f"{foreign[0]!r}); choose another file")
        return [n for n in names if n in _COLUMNS]

    def _check_schema(self, only: Optional[Sequence[str]] = None) -> None:
        for table, cols in _COLUMNS.items():
            if only is not None and table not in only:
                continue
            got = [(r[1], str(r[2]).upper()) for r in
                   self._db.execute(f"PRAGMA table_info({table})").fetchall()]
            if got != cols:
                have = ", ".join(n for n, _ in got) or "no such table"
                raise PoppinsError(f"{self.path}: memory database table {table!r} has a different "
                                   f"schema ({have}); expected columns "
                                   f"{', '.join(n for n, _ in cols)}")

    # -- plumbing ----------------------------------------------------------------------------
    def _tx(self):
        memory = self

        class _Tx:
            def __enter__(self_):
                memory._lock.acquire()
                memory._db.execute("BEGIN IMMEDIATE")

            def __exit__(self_, exc_type, *_):
                try:
                    memory._db.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    memory._lock.release()
                return False
        return _Tx()

    def _query(self, sql: str, args: Sequence = ()) -> List[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- conversations ----------------------------------------------------------------------
    @_guard
    def new_conversation(self, system: Optional[str] = None, title: str = "") -> str:
        cid = uuid.uuid4().hex[:12]
        now = time.time()
        with self._tx():
            self._db.execute("INSERT INTO conversations (id, title, system, created, updated) "
                             "VALUES (?, ?, ?, ?, ?)", (cid, title, system, now, now))
        return cid

    @_guard
    def exists(self, cid: str) -> bool:
        return bool(self._query("SELECT 1 FROM conversations WHERE id = ?", (cid,)))

    def _require(self, cid: str) -> None:
        if not self.exists(cid):
            raise PoppinsError(f"no conversation {cid!r} in {self.path} (see --list)")

    @_guard
    def system(self, cid: str) -> Optional[str]:
        self._require(cid)
        return self._query("SELECT system FROM conversations WHERE id = ?", (cid,))[0][0]

    @_guard
    def add_turn(self, cid: str, user: str, assistant: str,
                 tokens: Optional[Sequence[int]] = None) -> None:
        """The user's message and the complete answer, in one transaction.  ``tokens``: the
        answer's generated ids, so a replayed conversation gives the model exactly what it
        produced (thoughts and structure included), not only the rendered text."""
        now = time.time()
        with self._tx():
            row = self._db.execute("SELECT title FROM conversations WHERE id = ?",
                                   (cid,)).fetchone()
            if row is None:
                raise PoppinsError(f"no conversation {cid!r} in {self.path}")
            toks = json.dumps([int(t) for t in tokens]) if tokens is not None else None
            self._db.executemany(
                "INSERT INTO messages (conversation_id, role, content, tokens, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(cid, "user", user, None, now), (cid, "assistant", assistant, toks, now)])
            title = (row[0] if isinstance(row[0], str) else "") or " ".join(user.split())[:60]
            self._db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?",
                             (now, title, cid))

    @_guard
    def messages(self, cid: str, with_tokens: bool = False) -> List[Dict]:
        """OpenAI-shaped messages, the system prompt first when there is one; with
        ``with_tokens`` an answer also carries its generated ids under "tokens"."""
        system = self.system(cid)
        rows = self._query("SELECT id, role, content, tokens FROM messages WHERE conversation_id = ? "
                           "ORDER BY id", (cid,))
        if system is not None and not isinstance(system, str):
            raise self._bad("conversations", "system", cid)
        head = [{"role": "system", "content": system}] if system else []
        out = []
        for mid, role, content, toks in rows:
            if role not in ("user", "assistant"):
                raise self._bad("messages", "role", mid)
            if not isinstance(content, str):
                raise self._bad("messages", "content", mid)
            m = {"role": role, "content": content}
            if with_tokens and toks is not None:
                m["tokens"] = self._tokens(toks, mid)
            out.append(m)
        return head + out

    def _bad(self, table: str, column: str, row, why: str = "not text") -> PoppinsError:
        return PoppinsError(f"{self.path}: memory database table {table}, field {column} "
                            f"(row {row!r}): {why}")

    def _tokens(self, raw, mid) -> List[int]:
        """Stored token ids: a JSON list of integers in [0, MAX_TOKEN_ID)."""
        try:
            toks = json.loads(raw) if isinstance(raw, (str, bytes)) else None
        except (ValueError, RecursionError):
            toks = None
        if not isinstance(toks, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < MAX_TOKEN_ID
                for t in toks):
            raise self._bad("messages", "tokens", mid, "not a JSON list of token ids")
        return toks

    def turns(self, cid: str) -> List[Tuple[str, str]]:
        """(user, assistant) pairs in order."""
        msgs = [m for m in self.messages(cid) if m["role"] != "system"]
        return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]

    @_guard
    def list_conversations(self) -> List[Dict]:
        rows = self._query(
            "SELECT c.id, c.title, c.created, c.updated, COUNT(m.id) FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC")
        for r in rows:
            if not isinstance(r[0], str):
                raise self._bad("conversations", "id", r[0])
            if not isinstance(r[1], str):
                raise self._bad("conversations", "title", r[0])
            if not all(isinstance(x, (int, float)) for x in r[2:4]):
                raise self._bad("conversations", "created/updated", r[0], "not a number")
        return [{"id": r[0], "title": r[1], "created": r[2], "updated": r[3], "turns": r[4] // 2}
                for r in rows]

    @_guard
    def delete(self, cid: str) -> None:
        with self._tx():
            if self._db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount == 0:
                raise PoppinsError(f"no conversation {cid!r} in {self.path}")

    @_guard
    def integrity_ok(self) -> bool:
        return self._query("PRAGMA integrity_check")[0][0] == "ok"


def fit_recent_turns(turns: Sequence, cost: Callable[[object], int], budget: int) -> list:
    """The most recent ``turns`` whose total ``cost`` fits in ``budget``, oldest first; older
    turns are dropped whole, never cut in the middle."""
    kept, used = [], 0
    for turn in reversed(turns):
        c = cost(turn)
        if used + c > budget:
            break
        kept.append(turn)
        used += c
    return kept[::-1]

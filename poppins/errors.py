"""User-facing errors: problems with a user's input, reported as ``FILE:LINE[:COL]: message``.

Anything the user can fix (a malformed train.xml, a bad flag value, a missing file) is raised
as :class:`PoppinsError` carrying one or more :class:`Problem` records.  The CLI prints each
problem on its own line and exits with code 2; it never shows a traceback for them.  Library
callers catch ``PoppinsError`` and read ``.problems``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

#: At most this many problems are collected and reported before giving up.
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    file: Optional[str]
    line: Optional[int]
    message: str
    col: Optional[int] = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
            if self.line:
                where.append(str(self.line))
                if self.col:
                    where.append(str(self.col))
        return (":".join(where) + ": " if where else "") + self.message


class PoppinsError(Exception):
    """One or more problems with the user's input."""

    exit_code = 2

    def __init__(self, problems: "Iterable[Problem] | str", file: Optional[str] = None,
                 line: Optional[int] = None):
        if isinstance(problems, str):
            problems = [Problem(file, line, problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Collector:
    """Collects problems up to MAX_PROBLEMS; ``check()`` raises them all at once."""

    def __init__(self, limit: int = MAX_PROBLEMS):
        self.problems: list[Problem] = []
        self.limit = limit
        self.truncated = False

    def add(self, file, line, message, col=None) -> None:
        if len(self.problems) >= self.limit:
            self.truncated = True
            return
        self.problems.append(Problem(None if file is None else str(file), line, message, col))

    def __bool__(self) -> bool:
        return bool(self.problems)

    @property
    def full(self) -> bool:
        return len(self.problems) >= self.limit

    def check(self) -> None:
        if self.problems:
            problems = list(self.problems)
            if self.truncated:
                problems.append(Problem(None, None,
                                        f"(stopped after {self.limit} problems; fix these and run again)"))
            raise PoppinsError(problems)

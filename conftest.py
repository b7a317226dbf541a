"""Fixtures shared by tests/ and bench/.  ../shared (or $POPPINS_SHARED) is read only through
``shared_dir``, which skips cleanly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


def _shared():
    env = os.environ.get("POPPINS_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared()
    if d is None:
        pytest.skip("../shared is not present")
    return d


@pytest.fixture(scope="session")
def tinyshakespeare(shared_dir) -> str:
    p = shared_dir / "corpora" / "tinyshakespeare.txt"
    if not p.is_file():
        pytest.skip("tinyshakespeare.txt is not present in ../shared/corpora")
    return p.read_text(encoding="utf-8")

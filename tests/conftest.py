"""Test fixtures (the shared-corpus fixtures live in the root conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"

# Decode sessions with threads > 1 run every step on the team in tests (a test that asks for
# two threads then runs the two-thread code; on a busy CI machine the "auto" chooser would run
# many steps on one thread).  The chooser itself is tested with team="auto" explicitly.
os.environ.setdefault("POPPINS_TEAM", "fixed")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA

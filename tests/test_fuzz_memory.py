"""Seeded fuzzing of the chat memory database (scripts/fuzz.py's cases): damaged pages,
changed schemas, foreign tables, bad stored values; each opens and works or is refused with a
PoppinsError naming the file, and a refused file is left byte-identical."""
from __future__ import annotations

import pytest

from test_fuzz_formats import fuzz, run_kind


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz-fixture"))


def test_fuzz_memory(fx, tmp_path):
    run_kind("memory", fx, tmp_path, 500)

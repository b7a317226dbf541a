"""Seeded fuzzing of train.xml with imports (scripts/fuzz.py's cases): every mutated file set
trains its data stage or is refused with a PoppinsError naming a file, within 10 s, and the
previous output folder stays byte-identical."""
from __future__ import annotations

import pytest

from test_fuzz_formats import fuzz, run_kind


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz-fixture"))


def test_fuzz_trainxml(fx, tmp_path):
    run_kind("trainxml", fx, tmp_path, 600)

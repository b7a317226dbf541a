"""Seeded fuzzing of poppins' binary formats and tokenizer.json (scripts/fuzz.py's cases).

Every mutated model file, checkpoint and tokenizer.json must load and run or raise a
PoppinsError naming the file, within 10 s, leaving the file as it was.  ``make fuzz`` runs
the same generators over 10^5 cases."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"


def load_fuzz():
    spec = importlib.util.spec_from_file_location("poppins_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fuzz = load_fuzz()


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz-fixture"))


def run_kind(kind: str, fx, work: Path, n: int, seed: int = 1) -> dict:
    counts = {"ok": 0, "error": 0, "fail": 0}
    failures = []
    for i in range(n):
        case = fuzz.gen_case(kind, fx, random.Random(f"{seed}:{kind}:{i}"))
        outcome, detail = fuzz.run_case(kind, case, fx, work)
        counts[outcome] += 1
        if outcome == "fail":
            failures.append(f"case {i}: {detail}")
    assert not failures, f"{len(failures)} of {n} {kind} cases failed:\n" + "\n".join(failures[:3])
    # the generators reach both sides: valid variants and refused ones
    assert counts["ok"] > 0 and counts["error"] > 0, counts
    return counts


@pytest.mark.parametrize("kind,n", [("model", 1500), ("checkpoint", 1500), ("tokenizer", 1000)])
def test_fuzz(kind, n, fx, tmp_path):
    run_kind(kind, fx, tmp_path, n)


def test_the_harness_catches_a_traceback(fx, tmp_path, monkeypatch):
    """A case that ends in another exception, or a PoppinsError not naming the file, fails."""
    case = fuzz.gen_case("tokenizer", fx, random.Random(0))

    def boom(path, text):
        raise KeyError("params")
    monkeypatch.setattr(fuzz, "_use_tokenizer", boom)
    assert fuzz.run_case("tokenizer", case, fx, tmp_path)[0] == "fail"

    def anonymous(path, text):
        from poppins.errors import PoppinsError
        raise PoppinsError("something is wrong")
    monkeypatch.setattr(fuzz, "_use_tokenizer", anonymous)
    assert fuzz.run_case("tokenizer", case, fx, tmp_path)[0] == "fail"


def test_the_harness_catches_a_hang(fx, tmp_path, monkeypatch):
    import time

    case = fuzz.gen_case("tokenizer", fx, random.Random(0))
    monkeypatch.setattr(fuzz, "_use_tokenizer", lambda path, text: time.sleep(5))
    outcome, detail = fuzz.run_case("tokenizer", case, fx, tmp_path, timeout=0.2)
    assert outcome == "fail" and "hang" in detail

"""The ``slow`` marker (pyproject.toml) is registered, strict, and deselects exactly the long
tests: ``pytest -m "not slow" tests`` is the quick run, plain ``pytest tests`` (``make test``,
CI) runs everything.

Long means minutes, or a C build: the default training run on the bootstrap example, the
extension build without OpenMP and the full-minute server soak.  The tiny trained models the engine, API and server tests
share (about 10 s, once per process) are not marked: too many quick checks depend on them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SLOW = {
    "tests/test_train_e2e.py::test_default_train_learns_the_bootstrap_answers",
    "tests/test_bpe_build.py::test_build_without_openmp",
    "tests/test_server_http.py::test_64_streaming_clients_for_a_minute",
}


def _collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_pyproject_registers_slow_and_is_strict():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"slow: ' in text and "--strict-markers" in text
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_cmd = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pytest" in test_cmd and "slow" not in test_cmd      # make test runs the slow ones


def test_slow_selects_exactly_the_long_tests_and_not_slow_deselects_them():
    r = _collect("-m", "slow", "tests")
    assert r.returncode == 0, r.stdout + r.stderr              # no module fails to import
    got = {line.strip() for line in r.stdout.splitlines() if "::" in line}
    assert got == SLOW
    r = _collect("-m", "not slow", *sorted({s.split("::")[0] for s in SLOW}))
    assert r.returncode in (0, 5) and "deselected" in r.stdout, r.stdout + r.stderr
    kept = {line.strip() for line in r.stdout.splitlines() if "::" in line}
    assert not kept & SLOW

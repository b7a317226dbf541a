"""Seeded fuzzing of the command line and of eval probes files (scripts/fuzz.py's ``cli`` and
``probes`` kinds).  A command line with hostile numbers, unknown flags or missing values ends
with exit code 0 or 2, no traceback and a short error naming the flag or file; a mutated
probes file parses or is refused with a PoppinsError naming the file."""
from __future__ import annotations

import pytest

from test_fuzz_formats import fuzz, run_kind


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz-fixture"))


def test_fuzz_cli(fx, tmp_path):
    run_kind("cli", fx, tmp_path, 250)


def test_fuzz_probes(fx, tmp_path):
    run_kind("probes", fx, tmp_path, 400)


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--min-recall=--"], "--min-recall"),
    (["infer", "--top-k=--"], "--top-k"),
    (["infer", "-n--"], "-n/--n-predict"),
    (["infer", "--stop=--"], "--stop"),
    (["serve", "--port=--"], "--port"),
])
def test_an_empty_dashdash_value_is_a_usage_error(argv, flag, capsys):
    """Python < 3.12's argparse turns ``--flag=--`` into [] (then a TypeError deep inside a
    command, found by the cli fuzzer); it is refused like a missing value."""
    from poppins.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"argument {flag}: expected one argument" in err


def test_the_cli_harness_catches_an_escaping_exception(fx, tmp_path, monkeypatch):
    import poppins.cli

    def boom(argv=None):
        raise TypeError("float() argument must be a string")
    monkeypatch.setattr(poppins.cli, "main", boom)
    case = {"files": {}, "argv": ["tokenize", "-m", "{out}", "-p", "x"]}
    assert fuzz.run_case("cli", case, fx, tmp_path)[0] == "fail"

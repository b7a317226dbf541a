"""Issue 13, item 4: every CLI number is range-checked with one clear line and exit 2, thread
counts are clamped to a sane maximum (with a note), and -n 0 / -n -5 mean what they say."""
from __future__ import annotations

import subprocess
import sys

import pytest

from poppins.threads import MAX_THREADS_CAP, max_threads, resolve_threads
from test_engine import trained_dir
from test_infer_cli import PROMPT, cli


def test_thread_counts_are_clamped_with_a_note(capsys):
    hi = max_threads()
    assert 1 <= hi <= MAX_THREADS_CAP
    assert resolve_threads(65536) == hi
    assert "65536 threads; using" in capsys.readouterr().err
    assert resolve_threads(1) == 1
    assert resolve_threads(None) >= 1 and resolve_threads(-3) >= 1


def test_posix_threads_env_is_clamped(monkeypatch, capsys):
    from poppins.threads import default_threads

    monkeypatch.setenv("POPPINS_THREADS", "100000")
    assert default_threads() == max_threads()
    assert "POPPINS_THREADS" in capsys.readouterr().err
    monkeypatch.setenv("POPPINS_THREADS", "²")   # not an ASCII number: ignored
    assert default_threads() >= 1


def test_infer_with_an_absurd_thread_count_answers(capsys):
    d = str(trained_dir())
    assert cli(["infer", "-m", d, "-p", PROMPT, "--temp", "0", "-t", "30000", "-n", "4"]) == 0
    out = capsys.readouterr()
    assert "threads; using" in out.err and "Traceback" not in out.err


def test_model_load_clamps_threads():
    import poppins

    model = poppins.Model.load(str(trained_dir()), threads=100000)
    assert model.generate(PROMPT, temperature=0, max_tokens=3) is not None


@pytest.mark.parametrize("flags, needle", [
    (["--top-k", str(2 ** 63)], "top_k must be between"),
    (["--top-k", "-1"], "top_k must be between"),
    (["-n", "-5"], "max_tokens must be"),
    (["-n", str(2 ** 40)], "max_tokens must be"),
    (["--repeat-last-n", "-2"], "repeat_last_n must be between"),
    (["-s", str(2 ** 70)], "seed must be between"),
    (["--temp", "nan"], "temperature must be a number"),
    (["--top-p", "2"], "top-p must be in"),
])
def test_bad_generation_numbers_are_one_clear_error(capsys, flags, needle):
    d = str(trained_dir())
    code = cli(["infer", "-m", d, "-p", PROMPT, *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_n_zero_makes_no_token_and_n_minus_one_is_unlimited():
    import poppins

    model = poppins.Model.load(str(trained_dir()), threads=1)
    none = model.complete(PROMPT, temperature=0, max_tokens=0)
    assert none.tokens == [] and none.text == "" and none.stop_reason == "max-tokens"
    full = model.complete(PROMPT, temperature=0, max_tokens=-1)
    assert full.tokens and full.stop_reason in ("end", "context")


def test_cli_numbers_in_a_fresh_process_exit_2():
    """Through the real entry point: argparse and PoppinsError both end with exit code 2."""
    d = str(trained_dir())
    r = subprocess.run([sys.executable, "-m", "poppins", "infer", "-m", d, "-p", PROMPT,
                        "--top-k", str(2 ** 63)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "top_k" in r.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--port", "99999"], "--port must be at most 65535"),
    (["--port", "-1"], "--port must be at least 0"),
    (["--parallel", "1000000"], "--parallel must be at most"),
    (["--queue", str(2 ** 40)], "--queue must be at most"),
    (["--timeout", "nan"], "--timeout must be > 0"),
])
def test_serve_numbers_are_checked_before_loading(tmp_path, flags, needle):
    # no model at all: the flags are refused before the model is looked for
    r = subprocess.run([sys.executable, "-m", "poppins", "serve", "-m", str(tmp_path / "none"),
                        *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr

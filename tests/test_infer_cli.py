"""``python -m poppins infer`` and ``bench``: flags, -f, --stop, output streams, errors."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

from poppins.cli import COMMANDS
from poppins.errors import PoppinsError
from test_engine import trained_dir

PROMPT = "What is poppins?"
SYSTEM = "You are a helpful assistant."
ANSWER = "A tool that trains small ternary models. (source: https://example.org/poppins)"


def cli(argv) -> int:
    """poppins.cli.main once infer/bench are registered; until then the same dispatch."""
    if "infer" in COMMANDS and "bench" in COMMANDS:
        from poppins.cli import main

        return main(argv)
    from poppins.cli import bench, infer

    parser = argparse.ArgumentParser(prog="poppins")
    sub = parser.add_subparsers(dest="command")
    infer.add_parser(sub)
    bench.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except PoppinsError as exc:
        for problem in exc.problems:
            print(f"poppins: {problem}" if not problem.file else str(problem), file=sys.stderr)
        return exc.exit_code


def test_infer_prints_trained_answer(capsys):
    d = str(trained_dir())
    assert cli(["infer", "-m", d, "-p", PROMPT, "--system", SYSTEM, "--temp", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == ANSWER + "\n"
    assert "tok/s" in err and "prompt:" in err and "generation:" in err
    assert re.search(r"; \d+ threads?[;( ]", err)   # the threads used, never silent


def test_infer_prompt_file_and_stop(tmp_path, capsys):
    d = str(trained_dir())
    f = tmp_path / "prompt.txt"
    f.write_text(PROMPT + "\n", encoding="utf-8")
    assert cli(["infer", "-m", d, "-f", str(f), "--system", SYSTEM, "--temp", "0"]) == 0
    assert capsys.readouterr().out == ANSWER + "\n"
    assert cli(["infer", "-m", d, "-f", str(f), "--system", SYSTEM, "--temp", "0",
                "--stop", "ternary", "--stop", "never-there"]) == 0
    out, err = capsys.readouterr()
    assert out == ANSWER[:ANSWER.index("ternary")] + "\n"
    assert "stop: stop-string" in err


def test_infer_sampling_flags_seeded(capsys):
    d = str(trained_dir())
    args = ["infer", "-m", d, "-p", PROMPT, "--system", SYSTEM, "--temp", "1.2", "--top-k",
            "10", "--top-p", "0.9", "--min-p", "0.01", "--repeat-penalty", "1.1", "-s", "42",
            "-n", "8", "-t", "1"]
    assert cli(args) == 0
    first = capsys.readouterr()
    assert cli(args) == 0
    second = capsys.readouterr()
    assert first.out == second.out
    assert "seed 42" in first.err and "8 tokens" in first.err


def test_infer_context_note(capsys):
    d = str(trained_dir())
    assert cli(["infer", "-m", d, "-p", PROMPT, "--system", SYSTEM, "--temp", "0",
                "-c", "20"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "context" in err


def test_infer_errors(tmp_path, capsys):
    d = str(trained_dir())
    assert cli(["infer", "-m", str(tmp_path), "-p", "x"]) == 2
    assert "no model.poppins" in capsys.readouterr().err
    assert cli(["infer", "-m", d, "-p", "x", "-f", "y"]) == 2
    assert cli(["infer", "-m", d, "-f", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the prompt file" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe")
    assert cli(["infer", "-m", d, "-f", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert cli(["infer", "-m", d, "-p", "word " * 1000, "--system", ""]) == 2
    assert "the prompt is" in capsys.readouterr().err
    assert cli(["infer", "-m", d, "-p", "x", "--temp", "-1"]) == 2
    assert cli(["infer", "-m", d, "-p", "x", "-c", "100000"]) == 2
    assert "longer than the model" in capsys.readouterr().err


def test_infer_reads_stdin_when_piped():
    d = str(trained_dir())
    code = ("import sys; from test_infer_cli import cli; "
            f"sys.exit(cli(['infer', '-m', {d!r}, '--system', {SYSTEM!r}, '--temp', '0']))")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], input=PROMPT + "\n",
                       capture_output=True, text=True, cwd=str(__import__("pathlib").Path(
                           __file__).parent), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ANSWER + "\n"


def test_bench_table(capsys):
    d = str(trained_dir())
    assert cli(["bench", "-m", d, "-p", "16", "-n", "4", "-r", "1", "-t", "1,2"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| mha")]
    assert len(rows) == 4 and "pp16" in out and "tg4" in out
    assert cli(["bench", "-m", d, "-p", "5000", "-n", "0"]) == 2

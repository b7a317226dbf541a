"""The trainer's promise on the built-in example: the default ``train`` reproduces the answers.

Runs ``bootstrap`` and the default ``python -m poppins train`` in a temporary folder (a few
minutes on two cores; the time is printed, never asserted), then greedy-decodes every
distinct training prompt of the file through the training model and requires at least 95% of
the answers to equal their training answer token for token, a plan within the budget, the file
learned, and (through ``eval``) answers that hold up without or with other system prompts,
on validation variants, unseen surface variants and conversation chains.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_train_learns_the_bootstrap_answers(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = lambda *a: subprocess.run([sys.executable, "-m", "poppins", *a], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=1800)
    assert run("bootstrap").returncode == 0
    t = time.perf_counter()
    r = run("train")
    took = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "done     " in r.stdout
    print(f"\ndefault train on the bootstrap example: {took:.0f} s")

    from poppins.training.generate import exact_answer_rate
    from poppins.training.trainer import load_trained

    # the budget (issue 12): at most twice the 720 steps x 6 x 256 tokens of before
    plan = next(line for line in r.stdout.splitlines() if line.startswith("plan"))
    steps, rows, ctx = (int(x) for x in re.match(r"plan +(\d+) steps of (\d+) x (\d+)",
                                                 plan).groups())
    assert steps * rows * ctx <= 2 * 720 * 6 * 256, plan
    assert "the file was learned at step" in r.stdout, r.stdout[-2000:]

    import json
    out = tmp_path / ".poppins"
    own = json.loads((out / "manifest.json").read_text())["samples"]["train"]
    model = load_trained(out)
    # the file's own training samples come first in the bins (augmentation after them)
    rate, misses = exact_answer_rate(model, out, limit=own)
    print(f"exact training answers: {rate:.1%} ({len(misses)} misses)")
    assert rate >= 0.95

    # as clients ask, through the model file (bars a little below the measured figures)
    from poppins.evaluation import evaluate
    rep = evaluate(out, tmp_path / "train.xml",
                   probes=REPO / "tests" / "data" / "eval" / "example" / "probes.xml")
    print(rep.table())
    bars(rep)

    # and through `serve`, as an OpenAI client asks
    from poppins.api import Model
    from poppins.server import serve
    srv = serve(Model.load(out), port=0)
    try:
        rep = evaluate(out, tmp_path / "train.xml", url=srv.url + "/v1",
                       probes=REPO / "tests" / "data" / "eval" / "example" / "probes.xml")
    finally:
        srv.shutdown()
        srv.server_close()
    print("through serve:\n" + rep.table())
    bars(rep)


def bars(rep) -> None:
    """The eval bars of the default training, a little below the measured figures."""
    assert rep.row("train-none").rate >= 0.97 and rep.row("train-empty").rate >= 0.97
    assert rep.row("train-own").rate >= 0.97 and rep.row("val").rate >= 0.95
    assert all(rep.row(f"client-{i}").rate >= 0.9 for i in range(1, 11))
    assert rep.row("surface").rate >= 0.65 and rep.row("chains").rate >= 0.7
    assert rep.row("off-topic").rate >= 0.6 and rep.row("refused").rate <= 0.03

"""The trainer's promise on the built-in example: the default ``train`` reproduces the answers.

Runs ``bootstrap`` and the default ``python -m poppins train`` in a temporary folder (a few
minutes on two cores; the time is printed, never asserted), then greedy-decodes every
distinct training prompt through the training model and requires at least 95% of the
answers to equal their training answer token for token.
"""
from __future__ import annotations

import os
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

    model = load_trained(tmp_path / ".poppins")
    rate, misses = exact_answer_rate(model, tmp_path / ".poppins")
    print(f"exact training answers: {rate:.1%} ({len(misses)} misses)")
    assert rate >= 0.95

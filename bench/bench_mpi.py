"""Data-parallel training over MPI: 2 ranks x 1 thread against 1 rank x 2 threads.

    python -m pytest bench/bench_mpi.py --benchmark-only -q -s

The same training job (the tests' train.xml, d=128, 4 layers, 4 heads, batch 4, 2 micro-
batches per step, 16 steps) runs as ``python -m poppins train -t 2 --grad-accum 2`` and as
``mpirun -n 2 python -m poppins train`` (each rank: one micro-batch, its default thread count,
which is 1 on a 2-core machine), alternating, three times each, in one run.  Reported: the
best ms/step of each (from the last progress line), ratio = threads ms/step / MPI ms/step
(above 1: MPI is faster), and the share of rank 0's training time spent in the gradient
exchange (``mpi`` line: the step's collectives, waiting for the slower rank included).  Skips
without mpirun / mpi4py.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import report

REPO = Path(__file__).resolve().parent.parent
TRAIN_XML = REPO / "tests" / "data" / "current" / "train.xml"
FLAGS = ["--dim", "128", "--layers", "4", "--heads", "4", "--batch-size", "4", "--steps", "16",
         "--val-interval", "1000", "--checkpoint-interval", "1000", "--warmup-steps", "2"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_"))}
    env.update(PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("POPPINS_THREADS", None)
    return env


def _train(cmd) -> dict:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    ms = [float(m) for m in re.findall(r"\| (\d+) ms/step \|", r.stdout)]
    share = re.search(r"gradient exchange .*? ([\d.]+)% of the time", r.stdout)
    threads = re.search(r"(\d+) thread\(s\)", r.stdout)
    assert ms, r.stdout
    return {"ms": ms[-1], "share": float(share.group(1)) / 100 if share else None,
            "threads": int(threads.group(1)) if threads else None}


def test_mpi_two_ranks_vs_two_threads(benchmark, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("needs mpirun (apt: openmpi-bin)")
    pytest.importorskip("mpi4py")
    base = [sys.executable, "-m", "poppins", "train", "-i", str(TRAIN_XML), *FLAGS]
    threads_cmd = base + ["-o", str(tmp_path / "threads"), "-t", "2", "--grad-accum", "2"]
    mpi_cmd = (["mpirun", "--oversubscribe", "--bind-to", "none", "-n", "2"]
               + base + ["-o", str(tmp_path / "mpi")])
    threads_runs, mpi_runs = [], []

    def mpi_once():
        mpi_runs.append(_train(mpi_cmd))

    for _ in range(3):   # alternate, so both see the same machine load
        threads_runs.append(_train(threads_cmd))
        benchmark.pedantic(mpi_once, rounds=1, iterations=1) if not mpi_runs else mpi_once()
    best_mpi = min(mpi_runs, key=lambda r: r["ms"])
    best_thr = min(threads_runs, key=lambda r: r["ms"])
    ratio = report(benchmark, "train step, 2 ranks x 1 thread vs 1 rank x 2 threads",
                   best_mpi["ms"] / 1e3, "one_rank_two_threads", best_thr["ms"] / 1e3,
                   comm_share=f"{best_mpi['share']:.1%}",
                   threads_per_rank=best_mpi["threads"])
    assert ratio > 0

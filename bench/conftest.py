"""Benchmarks: ``pytest bench --benchmark-only`` (files named bench_*.py).

Each benchmark runs poppins and the named peer side by side in one run, prints the ratio and
stores it in ``benchmark.extra_info``.  The shared-corpus fixtures come from the root conftest.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collect_file(parent, file_path):
    # files named on the command line are collected by pytest itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def best_time(fn, rounds: int = 3) -> float:
    """Best wall time of fn() over a few rounds (for the peer side of a ratio)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def report(benchmark, name: str, ours_s: float, peer: str, peer_s: float, **extra) -> float:
    """Put ours/peer times and the speed ratio (peer time / our time) into extra_info."""
    ratio = peer_s / ours_s if ours_s > 0 else float("inf")
    benchmark.extra_info.update({"ours_s": ours_s, f"{peer}_s": peer_s,
                                 f"speedup_vs_{peer}": ratio, **extra})
    print(f"\n{name}: ours {ours_s * 1e3:.1f} ms, {peer} {peer_s * 1e3:.1f} ms, "
          f"ratio {ratio:.2f}x " + " ".join(f"{k}={v}" for k, v in extra.items()))
    return ratio


@pytest.fixture
def timer():
    """best_time(fn, rounds=3) -> seconds."""
    return best_time


@pytest.fixture
def ratio(benchmark):
    """ratio(name, ours_s, peer, peer_s, **extra) -> peer_s / ours_s, stored in extra_info."""
    def _ratio(name, ours_s, peer, peer_s, **extra):
        return report(benchmark, name, ours_s, peer, peer_s, **extra)
    return _ratio

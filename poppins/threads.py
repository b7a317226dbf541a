"""The one place that decides how many threads poppins uses.

``default_threads()`` is the number of physical cores available to this process (hyper-
threads share the SIMD units our kernels saturate, so they rarely help), overridable with
``POPPINS_THREADS``.  Callers pass the chosen count explicitly to every kernel; kernels never
read the environment themselves.
"""
from __future__ import annotations

import os
from functools import lru_cache


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux: from sysfs)."""
    cpus = _affinity()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
            with open(f"{base}/physical_package_id") as f:
                pkg = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((pkg, core))
    return max(1, len(cores) or len(cpus))


def default_threads() -> int:
    """Threads to use when the user did not say: ``POPPINS_THREADS`` or the physical cores."""
    env = os.environ.get("POPPINS_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n > 0:
            return n
    return physical_cores()


def resolve_threads(requested: "int | None") -> int:
    """A user's ``-t`` value (None or <= 0 means the default) -> a positive thread count."""
    if requested is None or requested <= 0:
        return default_threads()
    return int(requested)

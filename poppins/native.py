"""The one place that imports poppins' compiled extensions, or falls back to references.

Each kernel family (``bpe``, ``ternary``, ``ops``, ``engine``) is a compiled module ``poppins._<family>``
built from ``ext/<family>/``, mirrored by a pure NumPy/Python reference of the same
signatures inside the package.  Callers ask ``load("bpe")``: they get the compiled module, or
``None`` when it is missing or ``POPPINS_NO_EXT=1`` is set, and then use the reference.  A
missing extension is reported once per process (a warning on stderr), never an error.

``backend_info()`` reports what is active: per family compiled or reference (and why),
whether OpenMP is compiled in, the SIMD path each family chose, and the default thread count.

THE ``POPPINS_KERNEL`` rule (this module is its only reader): ``POPPINS_KERNEL`` (or a
``kernel=`` argument where a call takes one) names a kernel path of :data:`KERNEL_PATHS`
(``auto`` or empty: the best path).  An unknown name is a :class:`PoppinsError`.  Every
compiled family that has a path of that name uses it, and a family that has it but cannot run
it on this CPU/build is a PoppinsError (the same message everywhere); a family without a path
of that name (the engine's dot products have no ``avx512`` path) keeps its best, provided the
path runs on this machine (judged by the ternary family, which has every path): ``neon`` on an
x86 CPU is an error for every family.
``load()`` applies the rule to each compiled module it returns; ``backend_info()`` reports the
override and, instead of raising, the error it causes.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, Dict, Optional, Tuple

from ._version import __version__
from .errors import PoppinsError
from .threads import default_threads

#: Kernel families the package knows; each has a reference implementation in the package.
FAMILIES = ("bpe", "ternary", "ops", "engine")

#: Every kernel path name, in the ternary module's id order.
KERNEL_PATHS = ("scalar", "avx2", "avx512", "neon", "neondot")

#: The paths each dispatching family has (compiled in or not).
FAMILY_PATHS = {"ternary": KERNEL_PATHS, "ops": ("scalar", "avx2", "avx512"),
                "engine": ("scalar", "avx2")}

_cache: Dict[str, Optional[Any]] = {}
_reason: Dict[str, str] = {}
_applied: Dict[str, Optional[str]] = {}
_warned = False


def requested_kernel(kernel: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(path name or None for the best path, where it came from): ``kernel`` when given, else
    ``POPPINS_KERNEL``.  An unknown name is a PoppinsError."""
    source = "kernel"
    name = kernel
    if name is None:
        name = os.environ.get("POPPINS_KERNEL", "").strip() or None
        source = "POPPINS_KERNEL"
    if name is None:
        return None, source
    name = str(name).strip().lower()
    if name in ("", "auto"):
        return None, source
    if name not in KERNEL_PATHS:
        raise PoppinsError(f"{source}={name!r}: unknown kernel path; choose one of "
                           f"{', '.join(KERNEL_PATHS)}")
    return name, source


def _available(family: str, mod: Any) -> list:
    if family == "ternary":
        return list(mod.available())
    return list(mod.build_info()["available"])


def family_kernel(family: str, mod: Any, kernel: Optional[str] = None) -> Optional[str]:
    """The path of ``family`` (compiled module ``mod``) a request selects: its name, or None
    (the family's best path) when nothing is requested or the family has no such path.
    PoppinsError when the family has the path but this CPU/build cannot run it."""
    name, source = requested_kernel(kernel)
    if name is None:
        return None
    if name in FAMILY_PATHS.get(family, ()):
        avail = _available(family, mod)
    else:  # the family has no such path: the request must still be runnable on this machine
        family, mod = "ternary", _import("ternary")   # the family with every path
        if mod is None:
            return None
        avail = _available(family, mod)
        if name in avail:
            return None                                # e.g. avx512 for the engine's dot products
    if name not in avail:
        raise PoppinsError(f"{source}={name!r}: this kernel path is not available on this "
                           f"machine (available: {', '.join(avail)})")
    return name


def _apply_kernel(family: str, mod: Any) -> None:
    """Put POPPINS_KERNEL into a freshly loaded (or changed-environment) compiled module.
    On a bad request the module keeps its best path and the PoppinsError propagates."""
    env = os.environ.get("POPPINS_KERNEL", "")
    if family not in FAMILY_PATHS or _applied.get(family) == env:
        return
    # the best path the CPU runs (ternary: its own pick; ops/engine list theirs best last)
    best = mod.best_kernel() if family == "ternary" else _available(family, mod)[-1]
    try:
        name = family_kernel(family, mod) or best
    except PoppinsError:
        name = best
        raise
    finally:
        if family == "ternary":
            mod.set_default_kernel(mod.kernel_id(name))
        else:
            mod.set_kernel(name)
    _applied[family] = env


def ext_disabled() -> bool:
    """True when ``POPPINS_NO_EXT`` asks for the pure-Python/NumPy references everywhere."""
    return os.environ.get("POPPINS_NO_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning.  libgomp reads this once, when the first
    extension loads it; on a busy machine (two cores, other work) spinning barriers make every
    parallel region wait for a descheduled spinner, which costs 10x.  A user's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _import(family: str) -> Optional[Any]:
    if family in _cache:
        return _cache[family]
    _passive_openmp()
    mod = None
    if ext_disabled():
        _reason[family] = "disabled by POPPINS_NO_EXT"
    else:
        try:
            mod = importlib.import_module(f"poppins._{family}")
            _reason[family] = "compiled"
        except ImportError as exc:  # not built, or built for another Python/arch
            _reason[family] = f"not importable ({exc})"
    _cache[family] = mod
    return mod


def load(family: str, check_kernel: bool = True) -> Optional[Any]:
    """The compiled module for ``family``, or None (the caller then uses its reference).

    POPPINS_KERNEL is applied to the module (see the module docstring); an unknown name, or a
    path this machine cannot run, raises PoppinsError -- unless ``check_kernel`` is False (a
    caller that checks the request at every call, as poppins.engine.kernels does, with
    :func:`family_kernel`); the module then keeps its best path."""
    global _warned
    mod = _import(family)
    try:
        if mod is not None:
            _apply_kernel(family, mod)
        elif family in FAMILY_PATHS:
            requested_kernel()  # an unknown name is an error with the references too
    except PoppinsError:
        if check_kernel:
            raise
    if mod is None and not ext_disabled() and not _warned:
        _warned = True
        warnings.warn(
            f"poppins: compiled extension poppins._{family} is unavailable "
            f"({_reason[family]}); using the slower pure-Python/NumPy reference. "
            "Build the extensions with `make build` (or `pip install -e .`).",
            RuntimeWarning, stacklevel=2)
    return mod


def reset() -> None:
    """Forget imported modules (tests use this after changing POPPINS_NO_EXT)."""
    global _warned
    _cache.clear()
    _reason.clear()
    _applied.clear()
    _warned = False


def backend_info() -> Dict[str, Any]:
    """What is active: a plain dict, stable enough to print or log."""
    families: Dict[str, Any] = {}
    openmp = False
    for fam in FAMILIES:
        mod = _import(fam)
        entry: Dict[str, Any] = {"backend": "compiled" if mod is not None else "reference",
                                 "reason": _reason[fam]}
        if mod is not None:
            try:
                _apply_kernel(fam, mod)
            except PoppinsError as exc:
                entry["kernel_error"] = str(exc)
            info = getattr(mod, "build_info", None)
            if callable(info):
                entry.update(info())
            openmp = openmp or bool(entry.get("openmp", False))
        families[fam] = entry
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "no_ext": ext_disabled(),
        "openmp": openmp,
        "threads": default_threads(),
        "kernel_override": os.environ.get("POPPINS_KERNEL") or None,
        "extensions": families,
    }

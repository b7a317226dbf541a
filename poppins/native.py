"""The one place that imports poppins' compiled extensions, or falls back to references.

Each kernel family (``bpe``, ``ternary``, ``ops``, ``engine``) is a compiled module ``poppins._<family>``
built from ``ext/<family>/``, mirrored by a pure NumPy/Python reference of the same
signatures inside the package.  Callers ask ``load("bpe")``: they get the compiled module, or
``None`` when it is missing or ``POPPINS_NO_EXT=1`` is set, and then use the reference.  A
missing extension is reported once per process (a warning on stderr), never an error.

``backend_info()`` reports what is active: per family compiled or reference (and why),
whether OpenMP is compiled in, the SIMD path each family chose, and the default thread count.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, Dict, Optional

from ._version import __version__
from .threads import default_threads

#: Kernel families the package knows; each has a reference implementation in the package.
FAMILIES = ("bpe", "ternary", "ops", "engine")

#: The Python layer of a family and its loader: calling it applies POPPINS_KERNEL to the
#: compiled module, so backend_info() shows the path that will really run.
_WRAPPERS = {"ternary": ("poppins.engine.kernels", "_backend"),
             "ops": ("poppins.model.kernels", "_ops"),
             "engine": ("poppins.engine.ops", "_mod")}

_cache: Dict[str, Optional[Any]] = {}
_reason: Dict[str, str] = {}
_warned = False


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


def load(family: str) -> Optional[Any]:
    """The compiled module for ``family``, or None (the caller then uses its reference)."""
    global _warned
    mod = _import(family)
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
            if fam in _WRAPPERS:
                wrapper, loader = _WRAPPERS[fam]
                getattr(importlib.import_module(wrapper), loader)()
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

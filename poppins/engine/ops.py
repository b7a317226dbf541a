"""The engine's small ops: compiled ``poppins._engine`` or the NumPy references (ops_ref.py).

Every op has the signature of its reference (see :mod:`poppins.engine.ops_ref` for what each
computes).  ``impl(name)`` picks the compiled function when the extension is built (and
``POPPINS_NO_EXT`` is not set), else the reference.  The runtime checks shapes once per
session; these wrappers only check what would crash the compiled code (dtype, contiguity,
sizes).  The compiled ops release the GIL, so several threads can generate at once.
"""
from __future__ import annotations

import numpy as np

from . import ops_ref

_state = {"mod": None, "loaded": False}

NAMES = ("rmsnorm", "rmsnorm_quant", "quant_rows", "relu2_quant", "dequant", "rope",
         "attention", "mla_attention", "head_logits", "embed")


def _mod():
    if not _state["loaded"]:
        from .. import native

        # POPPINS_KERNEL=scalar|avx2 also forces the engine's dot-product path; other names
        # keep the best (applied by native.load: its one rule)
        _state["mod"] = native.load("engine")
        _state["loaded"] = True
    return _state["mod"]


def reset() -> None:
    """Forget the chosen backend (tests call this after changing POPPINS_NO_EXT)."""
    _state["mod"] = None
    _state["loaded"] = False


def is_compiled() -> bool:
    return _mod() is not None


def impl(name: str, use_reference: bool = False):
    """The compiled op ``name`` or its reference."""
    mod = None if use_reference else _mod()
    if mod is not None and hasattr(mod, name):
        return getattr(mod, name)
    return getattr(ops_ref, name)


def table(use_reference: bool = False) -> dict:
    """{name: function} for every op (the runtime binds them once per engine)."""
    return {n: impl(n, use_reference) for n in NAMES}


def check_f32(name: str, a, ndim: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != ndim:
        raise TypeError(f"{name}: expected a {ndim}-D float32 array")
    if a.size and a.strides[-1] != 4:
        raise ValueError(f"{name}: rows must be contiguous")

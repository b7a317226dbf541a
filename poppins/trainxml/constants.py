"""train.xml constants: one table of names, types, ranges and meaning, for both dialects.

The current dialect writes ``<learning-rate>0.001</learning-rate>``; the early one writes
``<constant key="learning_rate" value="0.001"/>``.  Both map to the dash-case name.  Values are
typed and range-checked here; a bad value is reported with the element (or key) and its line.
``train`` flags win over constants, and constants over the defaults in the training config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple


#: No integer constant may exceed this (they size memory or count loop iterations).
MAX_INT = (1 << 31) - 1


@dataclass(frozen=True)
class ConstantSpec:
    name: str             # dash-case element name
    kind: str             # "int" | "float" | "bool" | "enum" | "list"
    check: Optional[Callable[[Any], Optional[str]]] = None  # value -> error text or None
    choices: Tuple[str, ...] = ()
    effect: bool = True   # False: accepted for compatibility, has no effect here
    flag: Optional[str] = None


def _min(lo, inclusive=True):
    def check(v):
        if inclusive and v < lo:
            return f"must be >= {lo}"
        if not inclusive and v <= lo:
            return f"must be > {lo}"
        return None
    return check


def _between(lo, hi, hi_inclusive=True):
    def check(v):
        if v < lo or (v > hi if hi_inclusive else v >= hi):
            return f"must be between {lo} and {hi}" + ("" if hi_inclusive else " (excluded)")
        return None
    return check


_S = ConstantSpec
SPECS: Dict[str, ConstantSpec] = {s.name: s for s in [
    _S("embedding-dim", "int", _between(8, 1 << 16), flag="--dim"),
    _S("layers", "int", _between(1, 1024), flag="--layers"),
    _S("heads", "int", _between(1, 1024), flag="--heads"),
    _S("kv-heads", "int", _between(1, 1024), flag="--kv-heads"),
    _S("attention", "enum", choices=("mha", "mla"), flag="--attention"),
    _S("context-length", "int", _between(8, 1 << 20), flag="--context"),
    _S("steps", "int", _min(0), flag="--steps"),
    _S("epochs", "float", _min(0, inclusive=False), flag="--epochs"),
    _S("batch-size", "int", _between(1, 1 << 16), flag="--batch-size"),
    _S("learning-rate", "float", _between(0, 10), flag="--lr"),
    _S("weight-decay", "float", _between(0, 10), flag="--weight-decay"),
    _S("warmup-steps", "int", _min(0)),
    _S("val-interval", "int", _min(1)),
    _S("aim-loss", "float", _min(0, inclusive=False)),
    _S("gradient-accumulation-steps", "int", _min(1)),
    _S("bpe-vocab-size", "int", _between(381, 1 << 20)),
    _S("bpe-min-merge-frequency", "int", _min(0)),
    _S("bpe-requested-tokens", "list"),
    _S("loss-scale-response", "float", _min(0)),
    _S("loss-scale-source", "float", _min(0)),
    _S("loss-scale-code", "float", _min(0)),
    # The original's constants that mean nothing on a CPU-only trainer: checked, then ignored.
    _S("aim-train-gb", "float", _min(0, inclusive=False), effect=False),
    _S("aim-infer-gb", "float", _min(0, inclusive=False), effect=False),
    _S("mixed-precision", "bool", effect=False),
    _S("activation-precision", "enum", choices=("fp32", "int8"), effect=False),
    _S("kv-cache-precision", "enum", choices=("int8", "int4", "fp8"), effect=False),
    _S("rope-precision", "enum", choices=("fp32", "fp16"), effect=False),
    _S("num-workers", "int", _min(0), effect=False),
    _S("use-flash-attention", "bool", effect=False),
    _S("use-tensor-cores", "bool", effect=False),
] + [
    _S(f"{fam}-{seg}", "float", check, effect=False)
    for fam, check in (("weight-decay", _min(0)), ("dropout-rate", _between(0, 1, False)),
                       ("gradient-scale", _min(0)), ("gradient-clip", _min(0)))
    for seg in ("response", "source", "code")
]}

#: Early-dialect keys that do not follow the plain snake_case <-> dash-case rule.
_SNAKE_ALIASES = {"aim_infer_f16_gb": "aim-infer-gb"}


def name_for_key(key: str) -> Optional[str]:
    """The dash-case constant name for an early-dialect snake_case key (None if unknown)."""
    name = _SNAKE_ALIASES.get(key, key.replace("_", "-"))
    return name if name in SPECS and "-" not in key else None


def parse_value(spec: ConstantSpec, raw: str) -> Tuple[Any, Optional[str]]:
    """Parse ``raw`` for ``spec``: (value, None) or (None, error text)."""
    text = raw.strip()
    if spec.kind == "int":
        try:
            value = int(text, 10) if text.isascii() and len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None:
            return None, f"must be a whole number, got {raw[:40]!r}"
        if abs(value) > MAX_INT:
            return None, f"must be at most {MAX_INT}, got {raw[:40]!r}"
    elif spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            return None, f"must be a number, got {raw!r}"
        if not math.isfinite(value):
            return None, f"must be a finite number, got {raw!r}"
    elif spec.kind == "bool":
        if text in ("true", "1"):
            value = True
        elif text in ("false", "0"):
            value = False
        else:
            return None, f"must be true or false, got {raw!r}"
    elif spec.kind == "enum":
        if text not in spec.choices:
            return None, f"must be one of {', '.join(spec.choices)}, got {raw!r}"
        value = text
    else:  # pragma: no cover - lists are parsed by the reader
        raise ValueError(spec.kind)
    if spec.check is not None:
        err = spec.check(value)
        if err:
            return None, f"{err}, got {raw.strip()}"
    return value, None

"""TrainConfig: the training hyper-parameters, saved as JSON with every checkpoint.  ``train``
flags win over train.xml constants, and constants over these defaults.

The fields, their types, defaults and ranges are the ``config`` knobs of the knob table
(poppins/knobs.py); this module builds the dataclass from it and adds the rules that tie
fields together (dim a multiple of heads, ...).

The defaults train the built-in bootstrap example to reproduce its answers in a few minutes
on two cores: a small model (d=128, 4 layers, about 1M parameters), samples packed into
windows of at least 256 tokens (more when the longest sample needs it), 40 epochs, and a
cosine schedule with a high peak learning rate (ternary weights need larger steps than float
ones).
"""
from __future__ import annotations

import json
from dataclasses import asdict, field, fields, make_dataclass
from typing import Any, Dict, Mapping, Optional

from ..errors import PoppinsError
from ..knobs import CONFIG, check_overrides

_TYPES = {"int": int, "float": float, "bool": bool, "enum": str, "str": str}

#: train.xml constant -> TrainConfig field (constants of the same meaning as the flags).
CONSTANT_FIELDS = {k.constant: k.attr for k in CONFIG.values() if k.constant}


class _TrainConfigMethods:
    def validate(self) -> "TrainConfig":
        """Check every field against its knob's rule (values normalized: 3 -> 3.0 for a
        float), then the rules between fields.  Raises PoppinsError."""
        for name, knob in CONFIG.items():
            value, problem = knob.check(getattr(self, name))
            if problem:
                raise PoppinsError(f"{name} {problem}")
            setattr(self, name, value)

        def need(cond, msg):
            if not cond:
                raise PoppinsError(msg)
        need(self.dim % self.heads == 0, f"dim {self.dim} must be a multiple of heads {self.heads}")
        need((self.dim // self.heads) % 2 == 0, "dim / heads must be even (rotary embeddings)")
        if self.kv_heads is not None:
            need(self.heads % self.kv_heads == 0,
                 f"heads {self.heads} must be a multiple of kv-heads {self.kv_heads}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """From a saved config (config.json, a checkpoint): keys of other versions ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}).validate()

    def with_constants(self, constants: Dict[str, Any]) -> "TrainConfig":
        """A copy with train.xml constants applied (only fields the user did not set)."""
        d = self.to_dict()
        for const, fld in CONSTANT_FIELDS.items():
            if const in constants:
                d[fld] = constants[const]
        return TrainConfig.from_dict(d)

    def with_overrides(self, overrides: Optional[Mapping[str, Any]]) -> "TrainConfig":
        """A copy with ``overrides`` (TrainConfig fields) applied; unknown keys refused."""
        return TrainConfig.from_dict(dict(self.to_dict(), **check_overrides(overrides)))

    check_overrides = staticmethod(check_overrides)


def _annotation(knob):
    t = _TYPES[knob.kind]
    return Optional[t] if knob.optional else t


TrainConfig = make_dataclass(
    "TrainConfig",
    [(name, _annotation(k), field(default=k.default)) for name, k in CONFIG.items()],
    bases=(_TrainConfigMethods,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = ("Training hyper-parameters; fields: "
                       + ", ".join(f"{n}={k.default!r}" for n, k in CONFIG.items()) + ".")

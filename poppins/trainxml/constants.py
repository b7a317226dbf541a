"""train.xml constants: the constants check, generated from the knob table (poppins/knobs.py).

The current dialect writes ``<learning-rate>0.001</learning-rate>``; the early one writes
``<constant key="learning_rate" value="0.001"/>``.  Both map to the dash-case name.  Values are
typed and range-checked here by the same rule as the ``train`` flags and ``TrainConfig``; a bad
value is reported with the element (or key) and its line by the reader.  ``train`` flags win
over constants, and constants over the defaults in the knob table.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ..knobs import BY_CONSTANT, Knob, constant_for_key

#: The spec of one constant is its knob (``kind``, ``choices``, ``effect``, the range).
ConstantSpec = Knob

#: dash-case constant name -> its knob
SPECS: Dict[str, Knob] = BY_CONSTANT


def name_for_key(key: str) -> Optional[str]:
    """The dash-case constant name for an early-dialect snake_case key (None if unknown)."""
    return constant_for_key(key)


def parse_value(spec: Knob, raw: str) -> Tuple[Any, Optional[str]]:
    """Parse ``raw`` for ``spec``: (value, None) or (None, error text)."""
    return spec.parse(raw)

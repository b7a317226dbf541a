"""The one NumPy home of numerics shared by training and the engine.

(Minimal version from the structure branch: only :func:`rope_tables`, moved verbatim from
poppins/model/model.py so the engine no longer imports the training model.  The kernels
branch extends this module with the quantizer / RMSNorm / RoPE references.)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def rope_tables(length: int, rot: int, theta: float, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [length, rot/2]: angle t * theta^(-2i/rot)."""
    inv = theta ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    return (np.ascontiguousarray(np.cos(ang), dtype=dtype),
            np.ascontiguousarray(np.sin(ang), dtype=dtype))

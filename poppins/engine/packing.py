"""Ternary weights as 2-bit codes, and the quantizers training and inference share.

The 2-bit code mapping (decisions.md, pinned by a golden-bytes test)::

    0b00 = 0      0b01 = -1      0b10 = +1      0b11 = invalid

Four weights per byte, the first weight in the lowest bits (weight ``i`` of a row lives in
byte ``i // 4`` at bit shift ``2 * (i % 4)``); each row is padded to a whole number of bytes
(``ceil(k / 4)``, padding codes 0b00).  This is the model file's layout ``rows`` version 1.
The engine repacks it at load time into the kernels' layout (see ``kernels.py``).

Quantizers (decisions.md, "Training signal"):

- weights, per tensor: ``scale = mean|W|``; ``t = clip(rint(W / scale), -1, 1)`` (round half to
  even).  The mean is taken in float64 and stored as float32; the division is done in float32.
  A tensor whose scale is 0 (all zeros) or not finite quantizes to all zeros with scale 1.
- activations, per token (row): the one rule of :mod:`poppins.numerics` (training's):
  ``s = 127 / max(max|x|, 1e-5)`` in float32; ``q = clip(rint(x * s), -128, 127)`` as int8
  (an all-zero row gives zeros and ``s = 1.27e7``).  Dequantize with
  ``y = (sum t * q) * w_scale / s``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..numerics import act_quant_codes

CODE_ZERO = 0b00
CODE_NEG = 0b01
CODE_POS = 0b10
CODE_INVALID = 0b11

#: the file layout of packed codes (model file tensor table: layout name + version)
FILE_LAYOUT = "rows"
FILE_LAYOUT_VERSION = 1

# value + 1 -> code  (value -1 -> 0b01, 0 -> 0b00, +1 -> 0b10)
_VALUE_TO_CODE = np.array([CODE_NEG, CODE_ZERO, CODE_POS], dtype=np.uint8)
# code -> value (0b11 maps to 0 here; unpack_codes reports it)
_CODE_TO_VALUE = np.array([0, -1, 1, 0], dtype=np.int8)


def packed_row_bytes(k: int) -> int:
    """Bytes per row of the file layout for ``k`` weights."""
    return (int(k) + 3) // 4


def pack_codes(t: np.ndarray) -> np.ndarray:
    """Ternary values ``t`` (m, k) in {-1, 0, 1} -> uint8 codes (m, ceil(k/4))."""
    t = np.asarray(t)
    if t.ndim != 2:
        raise ValueError(f"pack_codes needs a 2-D array, got shape {t.shape}")
    if t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError("pack_codes: values must be -1, 0 or +1")
    m, k = t.shape
    kp = packed_row_bytes(k) * 4
    codes = np.zeros((m, kp), dtype=np.uint8)
    codes[:, :k] = _VALUE_TO_CODE[t.astype(np.int64) + 1]
    c = codes.reshape(m, kp // 4, 4)
    out = c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)
    return np.ascontiguousarray(out, dtype=np.uint8)


def unpack_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """uint8 codes (m, >= ceil(k/4)) -> int8 values (m, k).  Raises ValueError on 0b11."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] < packed_row_bytes(k):
        raise ValueError(f"unpack_codes: codes of shape {codes.shape} cannot hold {k} weights per row")
    m = codes.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    c = (codes[:, :, None] >> shifts) & 3
    c = c.reshape(m, -1)[:, :k]
    if np.any(c == CODE_INVALID):
        r, i = np.argwhere(c == CODE_INVALID)[0]
        raise ValueError(f"invalid 2-bit code 0b11 at row {r}, column {i}")
    return _CODE_TO_VALUE[c]


def absmean_quantize(w: np.ndarray) -> Tuple[np.ndarray, float]:
    """BitNet b1.58 absmean: (t int8 in {-1,0,1}, scale) with t * scale ~ w."""
    w = np.asarray(w, dtype=np.float32)
    scale = np.float32(np.mean(np.abs(w), dtype=np.float64)) if w.size else np.float32(0)
    if not (np.isfinite(scale) and scale > 0):
        return np.zeros(w.shape, dtype=np.int8), 1.0
    t = np.clip(np.rint(w / scale), -1, 1).astype(np.int8)
    return t, float(scale)


def quantize_activations_ref(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row int8 quantization of x (n, k) float32 -> (q int8 (n, k), scales float32 (n,))."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_activations_ref needs (n, k), got {x.shape}")
    return act_quant_codes(x)


@dataclass(frozen=True)
class TernaryTensor:
    """A ternary matrix as stored in the model file: codes (m, ceil(k/4)) uint8, its logical
    shape (m, k) and the absmean scale.  ``codes`` may be a read-only memmap view."""

    codes: np.ndarray
    shape: Tuple[int, int]
    scale: float

    def __post_init__(self):
        m, k = (int(d) for d in self.shape)
        object.__setattr__(self, "shape", (m, k))
        if self.codes.dtype != np.uint8 or self.codes.shape != (m, packed_row_bytes(k)):
            raise ValueError(f"TernaryTensor codes must be uint8 of shape {(m, packed_row_bytes(k))}, "
                             f"got {self.codes.dtype} {self.codes.shape}")

    @classmethod
    def from_values(cls, t: np.ndarray, scale: float = 1.0) -> "TernaryTensor":
        t = np.asarray(t)
        return cls(pack_codes(t), t.shape, float(scale))

    @classmethod
    def from_float(cls, w: np.ndarray) -> "TernaryTensor":
        """Quantize a float matrix with absmean (decisions.md)."""
        t, scale = absmean_quantize(w)
        return cls.from_values(t, scale)

    def values(self) -> np.ndarray:
        """The ternary values (m, k) as int8."""
        return unpack_codes(self.codes, self.shape[1])

    def dequantize(self) -> np.ndarray:
        return self.values().astype(np.float32) * np.float32(self.scale)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes)

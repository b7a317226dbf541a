"""Byte-level BPE tokenizer: ``from poppins.tokenizer import Tokenizer`` (also ``poppins.Tokenizer``).

The kernels are compiled (``poppins._bpe``, from ext/bpe) with a pure-Python twin in
:mod:`poppins.tokenizer.reference`; files are Hugging Face ``tokenizer.json``
(:mod:`poppins.tokenizer.hf_json`).
"""
from __future__ import annotations

from .core import Tokenizer
from .reference import PATTERN


def build_info() -> dict:
    """How the active BPE backend was built (compiled or reference)."""
    from .core import _impl

    return dict(_impl().build_info())


__all__ = ["Tokenizer", "PATTERN", "build_info"]

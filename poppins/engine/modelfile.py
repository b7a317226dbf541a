"""The model file ``OUT/model.poppins``: one self-contained, memory-mappable, checksummed file.

Layout, format version 1 (all integers little-endian; the frame is poppins.container's)::

    offset          size  field
    0               8     magic b"POPPINSM"
    8               4     u32 format version (1)
    12              4     u32 reserved (0)
    16              8     u64 header length H
    24              H     JSON header, UTF-8 (below)
    24 + H          pad   zero bytes up to data_start = the next multiple of 64
    data_start      D     tensor sections; each starts at a multiple of 64 from data_start
                          (so at a 64-byte aligned file offset) and is zero-padded to 64
    data_start + D  8     trailer magic b"POPPSUM\\0"
                    8     u64 D (again)
                    32    SHA-256 of every byte before the trailer

The JSON header::

    {"format": "poppins-model", "version": 1, "poppins_version": "...",
     "config": {...},                       # the model config, opaque here
     "tokenizer": "<tokenizer.json text>",
     "sources": {"id": {"url": ..., "title": ...}, ...},
     "default_system": "..." | null,
     "extra": {...},
     "alignment": 64, "data_bytes": D, "checksum": "sha256",
     "tensors": [{"name", "dtype", "shape", "offset", "nbytes", "scale", "layout"}, ...]}

``offset`` is relative to data_start.  ``dtype`` is ``ternary2`` (2-bit codes, layout
``{"name": "rows", "version": 1}``: see packing.py; ``shape`` is the logical (m, k) and
``scale`` the absmean scale) or one of ``f32``, ``f16``, ``i8`` (C-order little-endian
arrays, layout ``{"name": "dense", "version": 1}``, scale null).

``load_model_file`` maps the file read-only (np.memmap) and returns read-only views; it
rejects wrong-magic, wrong-version, truncated and corrupted files with a PoppinsError that
names the file and what is wrong.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .._version import __version__
from ..container import (ALIGN, PREFIX_SIZE, TRAILER_MAGIC, TRAILER_SIZE, read_frame,  # noqa: F401
                         section_offsets, write_frame)
from ..errors import PoppinsError
from .packing import FILE_LAYOUT, FILE_LAYOUT_VERSION, TernaryTensor, packed_row_bytes

MAGIC = b"POPPINSM"
FORMAT_VERSION = 1

#: dense dtypes of the tensor table -> NumPy dtypes (little-endian)
DENSE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1")}
_DENSE_LAYOUT = {"name": "dense", "version": 1}

PathLike = Union[str, "os.PathLike[str]"]


class ModelFile:
    """A loaded model file.  ``tensors`` maps names to read-only arrays or TernaryTensor."""

    def __init__(self, path: Path, header: Dict[str, Any], tensors: Dict[str, Any]):
        self.path = path
        self.header = header
        self.version = int(header["version"])
        self.config: Dict[str, Any] = header["config"]
        self.tokenizer_json: str = header["tokenizer"]
        self.sources: Dict[str, Any] = header["sources"]
        self.default_system: Optional[str] = header["default_system"]
        self.extra: Dict[str, Any] = header.get("extra") or {}
        self.tensors = tensors

    def __getitem__(self, name: str):
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:
        return f"ModelFile({str(self.path)!r}, {len(self.tensors)} tensors)"


def _tensor_entry(name: str, value) -> tuple:
    """(table entry without offset, contiguous bytes-like array)"""
    if not isinstance(name, str) or not name:
        raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
    if isinstance(value, TernaryTensor):
        m, k = value.shape
        codes = np.ascontiguousarray(value.codes, dtype=np.uint8)
        if codes.shape != (m, packed_row_bytes(k)):
            raise ValueError(f"tensor {name!r}: codes shape {codes.shape} does not match {value.shape}")
        scale = float(value.scale)
        if not np.isfinite(scale):
            raise ValueError(f"tensor {name!r}: scale {scale} is not finite")
        entry = {"name": name, "dtype": "ternary2", "shape": [m, k], "nbytes": int(codes.nbytes),
                 "scale": scale, "layout": {"name": FILE_LAYOUT, "version": FILE_LAYOUT_VERSION}}
        return entry, codes
    arr = np.asarray(value)
    for tag, dt in DENSE_DTYPES.items():
        if arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize:
            data = np.ascontiguousarray(arr, dtype=dt)
            entry = {"name": name, "dtype": tag, "shape": [int(d) for d in arr.shape],
                     "nbytes": int(data.nbytes), "scale": None, "layout": dict(_DENSE_LAYOUT)}
            return entry, data
    raise TypeError(f"tensor {name!r}: dtype {arr.dtype} is not storable "
                    f"(use float32, float16, int8 or a TernaryTensor)")


def write_model_file(path: PathLike, *, config: Mapping[str, Any],
                     tensors: Mapping[str, Any], tokenizer_json: str,
                     sources: Mapping[str, Any], default_system: Optional[str],
                     extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a model file atomically (temporary name in the same folder, then os.replace)."""
    path = Path(path)
    if not isinstance(tokenizer_json, str):
        raise TypeError("tokenizer_json must be a str (the tokenizer.json text)")
    if default_system is not None and not isinstance(default_system, str):
        raise TypeError("default_system must be a str or None")
    entries, blobs = [], []
    for name, value in tensors.items():
        entry, data = _tensor_entry(name, value)
        entries.append(entry)
        blobs.append(data)
    offsets, data_bytes = section_offsets(e["nbytes"] for e in entries)
    for entry, off in zip(entries, offsets):
        entry["offset"] = off
    header = {
        "format": "poppins-model",
        "version": FORMAT_VERSION,
        "poppins_version": __version__,
        "config": dict(config),
        "tokenizer": tokenizer_json,
        "sources": dict(sources),
        "default_system": default_system,
        "extra": dict(extra or {}),
        "alignment": ALIGN,
        "data_bytes": data_bytes,
        "checksum": "sha256",
        "tensors": entries,
    }
    return write_frame(path, MAGIC, FORMAT_VERSION, header, blobs)


def _fail(path: Path, what: str) -> PoppinsError:
    return PoppinsError(f"{what}", file=str(path))


def load_model_file(path: PathLike, mmap: bool = True, verify: bool = True) -> ModelFile:
    """Open a model file.  ``mmap``: map it read-only (else read it into memory);
    ``verify``: check the SHA-256 of the whole file (skip for speed on trusted files)."""
    path = Path(path)
    header, buf, data_start, data_bytes = read_frame(path, MAGIC, FORMAT_VERSION, "model file",
                                                     mmap=mmap, verify=verify)
    for key in ("config", "tokenizer", "sources", "default_system", "tensors"):
        if key not in header:
            raise _fail(path, f"corrupted model file: the header has no {key!r}")
    tensors = _read_tensors(path, header["tensors"], buf, data_start, data_bytes)
    return ModelFile(path, header, tensors)


def _read_tensors(path: Path, table, buf: np.ndarray, data_start: int, data_bytes: int) -> dict:
    if not isinstance(table, list):
        raise _fail(path, "corrupted model file: the tensor table is not a list")
    out: Dict[str, Any] = {}
    for i, e in enumerate(table):
        try:
            name = e["name"]
            dtype = e["dtype"]
            shape = tuple(int(d) for d in e["shape"])
            offset, nbytes = int(e["offset"]), int(e["nbytes"])
            layout = e.get("layout") or {}
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"corrupted model file: tensor table entry {i} is malformed") from None
        bad = None
        if not isinstance(name, str) or name in out:
            bad = "a missing or duplicate name"
        elif any(d < 0 for d in shape):
            bad = f"a negative dimension {shape}"
        elif offset < 0 or offset % ALIGN or offset + nbytes > data_bytes:
            bad = f"section [{offset}, {offset + nbytes}) outside the data ({data_bytes} bytes)"
        if bad is None:
            start = data_start + offset
            if dtype == "ternary2":
                if len(shape) != 2:
                    bad = f"ternary shape {shape} is not 2-D"
                elif (layout.get("name"), layout.get("version")) != (FILE_LAYOUT, FILE_LAYOUT_VERSION):
                    bad = f"unsupported ternary layout {layout}"
                elif nbytes != shape[0] * packed_row_bytes(shape[1]):
                    bad = f"{nbytes} bytes do not hold a ternary {shape} matrix"
                elif not isinstance(e.get("scale"), (int, float)):
                    bad = "no scale"
                else:
                    codes = buf[start:start + nbytes].reshape(shape[0], packed_row_bytes(shape[1]))
                    out[name] = TernaryTensor(codes, shape, float(e["scale"]))
            elif dtype in DENSE_DTYPES:
                dt = DENSE_DTYPES[dtype]
                if nbytes != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                    bad = f"{nbytes} bytes do not hold a {dtype} {shape} array"
                else:
                    out[name] = buf[start:start + nbytes].view(dt).reshape(shape)
            else:
                bad = f"unknown dtype {dtype!r}"
        if bad is not None:
            raise _fail(path, f"corrupted model file: tensor {e.get('name', i)!r} has {bad}")
    return out

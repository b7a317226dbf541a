"""The model file ``OUT/model.poppins``: one self-contained, memory-mappable, checksummed file.

Layout, format version 1 (all integers little-endian)::

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

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .._version import __version__
from ..errors import PoppinsError
from .packing import FILE_LAYOUT, FILE_LAYOUT_VERSION, TernaryTensor, packed_row_bytes

MAGIC = b"POPPINSM"
TRAILER_MAGIC = b"POPPSUM\x00"
FORMAT_VERSION = 1
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, reserved, header length
_TRAILER = struct.Struct("<8sQ32s")  # trailer magic, data bytes, sha256
PREFIX_SIZE = _PREFIX.size
TRAILER_SIZE = _TRAILER.size

#: dense dtypes of the tensor table -> NumPy dtypes (little-endian)
DENSE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1")}
_DENSE_LAYOUT = {"name": "dense", "version": 1}
_MAX_HEADER = 1 << 31

PathLike = Union[str, "os.PathLike[str]"]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


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
    offset = 0
    for name, value in tensors.items():
        entry, data = _tensor_entry(name, value)
        entry["offset"] = offset
        offset = _align(offset + entry["nbytes"])
        entries.append(entry)
        blobs.append(data)
    data_bytes = offset
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
    hbytes = json.dumps(header, ensure_ascii=False, allow_nan=False,
                        separators=(",", ":")).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes))
    data_start = _align(len(prefix) + len(hbytes))

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            h = hashlib.sha256()

            def put(b) -> None:
                f.write(b)
                h.update(b)

            put(prefix)
            put(hbytes)
            put(b"\0" * (data_start - len(prefix) - len(hbytes)))
            pos = 0
            for entry, data in zip(entries, blobs):
                assert pos == entry["offset"]
                if data.nbytes:
                    put(memoryview(data).cast("B"))
                pos += entry["nbytes"]
                pad = _align(pos) - pos
                if pad:
                    put(b"\0" * pad)
                pos += pad
            f.write(_TRAILER.pack(TRAILER_MAGIC, data_bytes, h.digest()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _fail(path: Path, what: str) -> PoppinsError:
    return PoppinsError(f"{what}", file=str(path))


def load_model_file(path: PathLike, mmap: bool = True, verify: bool = True) -> ModelFile:
    """Open a model file.  ``mmap``: map it read-only (else read it into memory);
    ``verify``: check the SHA-256 of the whole file (skip for speed on trusted files)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(PREFIX_SIZE)
    except OSError as exc:
        raise _fail(path, f"cannot read the model file: {exc.strerror or exc}") from None
    if len(prefix) >= 8 and prefix[:8] != MAGIC:
        raise _fail(path, f"not a poppins model file (magic {prefix[:8]!r}, expected {MAGIC!r})")
    if len(prefix) < PREFIX_SIZE:
        raise _fail(path, f"truncated model file ({size} bytes, shorter than its {PREFIX_SIZE}-byte prefix)")
    _, version, _, hlen = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise _fail(path, f"unsupported model file format version {version} "
                          f"(this poppins reads version {FORMAT_VERSION}); "
                          f"retrain or use a matching poppins version")
    if hlen > _MAX_HEADER or PREFIX_SIZE + hlen + TRAILER_SIZE > size:
        raise _fail(path, f"truncated model file ({size} bytes; the header alone needs "
                          f"{PREFIX_SIZE + hlen} bytes plus a {TRAILER_SIZE}-byte trailer)")

    if mmap:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        buf = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if buf.size != size:
        raise _fail(path, "the model file changed while it was being read")

    try:
        header = json.loads(bytes(buf[PREFIX_SIZE:PREFIX_SIZE + hlen]).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"corrupted model file: the header is not valid JSON ({exc})") from None
    data_start = _align(PREFIX_SIZE + hlen)
    try:
        data_bytes = int(header["data_bytes"])
    except (KeyError, TypeError, ValueError):
        raise _fail(path, "corrupted model file: the header has no valid 'data_bytes'") from None
    expected = data_start + data_bytes + TRAILER_SIZE
    if size < expected:
        raise _fail(path, f"truncated model file ({size} bytes, expected {expected})")
    if size > expected:
        raise _fail(path, f"corrupted model file ({size} bytes, expected {expected}: "
                          "unexpected bytes after the end)")
    tmagic, tdata, digest = _TRAILER.unpack(bytes(buf[size - TRAILER_SIZE:]))
    if tmagic != TRAILER_MAGIC or tdata != data_bytes:
        raise _fail(path, "corrupted or truncated model file: bad trailer")
    if verify:
        h = hashlib.sha256()
        step = 1 << 24
        end = size - TRAILER_SIZE
        for i in range(0, end, step):
            h.update(buf[i:min(end, i + step)])
        if h.digest() != digest:
            raise _fail(path, "corrupted model file: SHA-256 checksum mismatch")

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

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

import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .._version import __version__
from ..container import (ALIGN, PREFIX_SIZE, TRAILER_MAGIC, TRAILER_SIZE,  # noqa: F401
                         check_table, field_error, is_int, is_number, read_frame,
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


def _tensor_nbytes(dtype, shape, entry) -> Optional[int]:
    """Bytes of a tensor-table entry (None: unknown dtype); raises ValueError for a ternary
    entry that is not 2-D."""
    if dtype == "ternary2":
        if len(shape) != 2:
            return -1   # never equal to nbytes: reported as "do not hold"
        return shape[0] * packed_row_bytes(shape[1])
    dt = DENSE_DTYPES.get(dtype)
    if dt is None:
        return None
    return dt.itemsize * math.prod(shape)


#: header field -> (accepted types, description)
_HEADER_FIELDS = {"config": ((dict,), "an object"), "tokenizer": ((str,), "a string"),
                  "sources": ((dict,), "an object"),
                  "default_system": ((str, type(None)), "a string or null"),
                  "extra": ((dict, type(None)), "an object or null")}


def load_model_file(path: PathLike, mmap: bool = True, verify: bool = True) -> ModelFile:
    """Open a model file.  ``mmap``: map it read-only (else read it into memory);
    ``verify``: check the SHA-256 of the whole file (skip for speed on trusted files).
    Every header field is typed and the tensor table checked against the file
    (poppins.container.check_table) before any tensor is viewed; ``check_model_config``
    then checks a model config against the tensors."""
    path = Path(path)
    header, buf, data_start, data_bytes = read_frame(path, MAGIC, FORMAT_VERSION, "model file",
                                                     mmap=mmap, verify=verify)
    for key in ("config", "tokenizer", "sources", "default_system", "tensors"):
        if key not in header:
            raise _fail(path, f"corrupted model file: the header has no {key!r}")
    for key, (types, desc) in _HEADER_FIELDS.items():
        if key in header and not isinstance(header[key], types):
            raise field_error(path, "model file", key, f"not {desc}")
    for sid, src in header["sources"].items():
        if not isinstance(src, dict) or not all(isinstance(src.get(k, ""), str)
                                                for k in ("url", "title")):
            raise field_error(path, "model file", f"sources[{sid!r}]",
                              "not an object with string url and title")
    if not is_int(header.get("version")):
        raise field_error(path, "model file", "version", "not an integer")
    tensors = _read_tensors(path, header["tensors"], buf, data_start, data_bytes)
    return ModelFile(path, header, tensors)


def _read_tensors(path: Path, table, buf: np.ndarray, data_start: int, data_bytes: int) -> dict:
    out: Dict[str, Any] = {}
    for e in check_table(path, "model file", table, data_bytes, _tensor_nbytes):
        name, dtype, shape, offset, nbytes = (e["name"], e["dtype"], e["shape"], e["offset"],
                                              e["nbytes"])
        start = data_start + offset
        if dtype == "ternary2":
            layout = e.get("layout")
            if not isinstance(layout, dict) or \
                    (layout.get("name"), layout.get("version")) != (FILE_LAYOUT, FILE_LAYOUT_VERSION):
                raise _fail(path, f"corrupted model file: tensor {name!r} has an unsupported "
                                  f"ternary layout {layout!r}")
            scale = e.get("scale")
            if not is_number(scale) or not math.isfinite(scale) or scale < 0:
                raise field_error(path, "model file", f"tensors ({name!r}).scale",
                                  f"not a finite non-negative number (got {scale!r})")
            codes = buf[start:start + nbytes].reshape(shape[0], packed_row_bytes(shape[1]))
            out[name] = TernaryTensor(codes, shape, float(scale))
        else:
            out[name] = buf[start:start + nbytes].view(DENSE_DTYPES[dtype]).reshape(shape)
    return out


#: Runtime limits a model config must respect (checked before anything is allocated).
MAX_CONTEXT = 1 << 20
#: Bytes of the buffers a full-context session allocates (KV cache, rotary tables).
MAX_RUNTIME_BYTES = 1 << 30


def runtime_bytes(cfg) -> int:
    """Bytes of a full-context session's KV cache plus the engine's rotary tables."""
    from .attention import attention_unit

    ctx = cfg.context_length
    per = sum(attention_unit(cfg).cache_widths(cfg))
    return 4 * ctx * per * cfg.layers + 2 * 4 * ctx * (cfg.rope_width // 2)


def check_runtime_limits(path, what: str, field: str, cfg) -> None:
    """The one check of a model config's runtime sizes (model files and checkpoints):
    context_length at most MAX_CONTEXT, KV cache and rotary tables at most MAX_RUNTIME_BYTES."""
    if cfg.context_length > MAX_CONTEXT:
        raise field_error(path, what, f"{field}.context_length",
                          f"{cfg.context_length} is over the limit of {MAX_CONTEXT}")
    need = runtime_bytes(cfg)
    if need > MAX_RUNTIME_BYTES:
        raise field_error(path, what, field, f"a full-context session needs {need >> 20} MiB "
                          f"of KV cache and rotary tables, over the limit of "
                          f"{MAX_RUNTIME_BYTES >> 20} MiB")


def check_model_config(mf: ModelFile):
    """The ModelConfig of a loaded model file, checked against the tensor table (every tensor
    the config implies present, with its shape and a valid dtype; no extra layers), the
    tokenizer's vocabulary (the same size) and the runtime limits (MAX_CONTEXT,
    MAX_RUNTIME_BYTES), so nothing sized by the header is allocated before it is known to
    fit."""
    from .config import ModelConfig, param_shapes
    from .kernels import K_MAX

    path = mf.path
    try:
        cfg = ModelConfig.from_dict(dict(mf.config), source=str(path))
    except TypeError as exc:
        raise PoppinsError(f"corrupted model file: field config: {exc}", file=str(path)) from None
    check_runtime_limits(path, "model file", "config", cfg)
    if 5 * cfg.layers > len(mf.tensors):   # every layer has at least 5 tensors
        raise field_error(path, "model file", "config.layers",
                          f"{cfg.layers} layers, but the file has only {len(mf.tensors)} tensors")
    expected = {}
    for name, shape, kind in param_shapes(cfg):
        expected[name] = (tuple(shape), kind)
        if kind in ("embed", "head"):
            expected[name + ".scale"] = ((shape[0],), "scale")
    for name, (shape, kind) in expected.items():
        if name not in mf.tensors:
            if kind == "scale":
                continue
            raise field_error(path, "model file", "tensors",
                              f"tensor {name!r} (which the config implies) is missing")
        t = mf.tensors[name]
        ternary = isinstance(t, TernaryTensor)
        # a float model (quantize=False) keeps its BitLinear weights as f32
        want_ternary = kind == "bitlinear" and cfg.quantize
        if ternary != want_ternary \
                or (kind == "bitlinear" and not ternary and t.dtype != np.float32) \
                or (kind == "scale" and t.dtype != np.float32) \
                or (kind == "norm" and t.dtype not in (np.float32, np.float16)):
            raise field_error(path, "model file", f"tensors ({name!r}).dtype",
                              f"{'ternary2' if ternary else t.dtype} is not valid for a "
                              f"{kind} tensor")
        if tuple(t.shape) != shape:
            raise field_error(path, "model file", f"tensors ({name!r}).shape",
                              f"{list(t.shape)}, the config implies {list(shape)}")
        if ternary:
            if shape[1] > K_MAX:
                raise field_error(path, "model file", f"tensors ({name!r}).shape",
                                  f"k={shape[1]} columns is over the kernels' limit {K_MAX}")
            codes = np.asarray(t.codes)
            if codes.size and np.bitwise_and(codes, codes >> 1).__iand__(0x55).any():
                raise field_error(path, "model file", f"tensors ({name!r})",
                                  "invalid 2-bit codes (0b11) in the ternary data")
    extra = [n for n in mf.tensors if n not in expected]
    if extra:
        raise field_error(path, "model file", "tensors", f"tensor {extra[0]!r} does not belong "
                          f"to the config ({cfg.layers} layers, attention {cfg.attention})")
    size = _tokenizer_size(mf.tokenizer_json)
    if size is not None and size != cfg.vocab_size:   # ids past the tokenizer cannot be decoded
        raise field_error(path, "model file", "config.vocab_size",
                          f"{cfg.vocab_size}, but the tokenizer has {size} tokens")
    return cfg


def _tokenizer_size(text: str) -> Optional[int]:
    """The number of entries of a tokenizer.json's vocabulary (None: not readable here; the
    tokenizer's own reader reports that when it is used)."""
    import json

    try:
        obj = json.loads(text)
        vocab = obj["model"]["vocab"]
        ids = set(vocab.values()) | {t["id"] for t in obj.get("added_tokens") or []}
        return len(ids)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None

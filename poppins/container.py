"""The binary frame shared by poppins' own formats (the model file, checkpoints).

Layout (little-endian)::

    0        8   magic (8 bytes, names the format)
    8        4   u32 format version
    12       4   u32 reserved (0)
    16       8   u64 header length H
    24       H   JSON header (UTF-8); it holds "data_bytes" = D and the format's section table
    ...          zero padding to data_start, the next multiple of 64
    data     D   sections, each at a multiple of 64 from data_start, zero-padded to 64
    end-48   8   trailer magic b"POPPSUM\\0"
    end-40   8   u64 D (again)
    end-32   32  SHA-256 of every byte before the trailer

``write_frame`` writes atomically (temporary name, fsync, rename).  ``read_frame`` checks the
magic, the version, every size (truncation, trailing bytes), the trailer and the checksum, and
raises PoppinsError naming the file and the problem.  ``write_container`` / ``read_container``
are the generic use: named NumPy arrays in an "arrays" table (checkpoints).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import PoppinsError
from .fileio import atomic_open

TRAILER_MAGIC = b"POPPSUM\x00"
ALIGN = 64
PREFIX = struct.Struct("<8sIIQ")    # magic, version, reserved, header length
TRAILER = struct.Struct("<8sQ32s")  # trailer magic, data bytes, sha256
PREFIX_SIZE, TRAILER_SIZE = PREFIX.size, TRAILER.size
MAX_HEADER = 1 << 31
#: At most this many dimensions in a table entry's shape.
MAX_NDIM = 8
#: The NumPy dtypes a container's array table may name (little-endian numbers only).
ARRAY_DTYPES = {s: np.dtype(s) for s in ("<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8",
                                         "|u1", "<u2", "<u4", "<u8", "|b1")}


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def section_offsets(sizes: Iterable[int]) -> Tuple[List[int], int]:
    """Offsets (from data_start) of sections of ``sizes`` bytes, and the data length D."""
    offsets, off = [], 0
    for n in sizes:
        offsets.append(off)
        off = align(off + int(n))
    return offsets, off


def write_frame(path, magic: bytes, version: int, header: Mapping[str, Any],
                sections: Sequence[np.ndarray]) -> Path:
    """Write ``header`` (which must hold "data_bytes") and ``sections`` at the offsets
    ``section_offsets`` gives for their sizes."""
    assert len(magic) == 8
    path = Path(path)
    offsets, data_bytes = section_offsets(s.nbytes for s in sections)
    assert header["data_bytes"] == data_bytes
    head = json.dumps(header, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")
    prefix = PREFIX.pack(magic, version, 0, len(head))
    data_start = align(len(prefix) + len(head))
    h = hashlib.sha256()
    with atomic_open(path, "wb") as f:
        def put(b) -> None:
            h.update(b)
            f.write(b)
        put(prefix)
        put(head)
        put(b"\0" * (data_start - len(prefix) - len(head)))
        pos = 0
        for off, s in zip(offsets, sections):
            put(b"\0" * (off - pos))
            if s.nbytes:
                put(memoryview(np.ascontiguousarray(s)).cast("B"))
            pos = off + s.nbytes
        put(b"\0" * (data_bytes - pos))
        f.write(TRAILER.pack(TRAILER_MAGIC, data_bytes, h.digest()))
    return path


def read_frame(path, magic: bytes, version: int, what: str, mmap: bool = True,
               verify: bool = True) -> Tuple[Dict[str, Any], np.ndarray, int, int]:
    """(header, whole-file bytes, data_start, data_bytes) of a checked file; the bytes are a
    read-only memmap unless ``mmap`` is False."""
    path = Path(path)

    def fail(msg: str) -> PoppinsError:
        return PoppinsError(msg, file=str(path))

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(PREFIX_SIZE)
    except OSError as exc:
        raise fail(f"cannot read the {what}: {exc.strerror or exc}") from None
    if len(prefix) >= 8 and prefix[:8] != magic:
        raise fail(f"not a poppins {what} (magic {prefix[:8]!r}, expected {magic!r})")
    if len(prefix) < PREFIX_SIZE:
        raise fail(f"truncated {what} ({size} bytes, shorter than its {PREFIX_SIZE}-byte prefix)")
    _, got, _, hlen = PREFIX.unpack(prefix)
    if got != version:
        raise fail(f"unsupported {what} format version {got} (this poppins reads version "
                   f"{version}); retrain or use a matching poppins version")
    if hlen > MAX_HEADER or PREFIX_SIZE + hlen + TRAILER_SIZE > size:
        raise fail(f"truncated {what} ({size} bytes; the header alone needs "
                   f"{PREFIX_SIZE + hlen} bytes plus a {TRAILER_SIZE}-byte trailer)")
    buf = (np.memmap(path, dtype=np.uint8, mode="r") if mmap
           else np.frombuffer(path.read_bytes(), dtype=np.uint8))
    if buf.size != size:
        raise fail(f"the {what} changed while it was being read")
    try:
        header = json.loads(bytes(buf[PREFIX_SIZE:PREFIX_SIZE + hlen]).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise fail(f"corrupted {what}: the header is not valid JSON ({exc})") from None
    except RecursionError:
        raise fail(f"corrupted {what}: the header is not valid JSON (nested too deeply)") from None
    data_start = align(PREFIX_SIZE + hlen)
    data_bytes = header.get("data_bytes")
    if not is_int(data_bytes) or data_bytes < 0:
        raise fail(f"corrupted {what}: the header has no valid 'data_bytes' "
                   f"(got {_short(data_bytes)})")
    expected = data_start + data_bytes + TRAILER_SIZE
    if size < expected:
        raise fail(f"truncated {what} ({size} bytes, expected {expected})")
    if size > expected:
        raise fail(f"corrupted {what} ({size} bytes, expected {expected}: unexpected bytes "
                   "after the end)")
    tmagic, tdata, digest = TRAILER.unpack(bytes(buf[size - TRAILER_SIZE:]))
    if tmagic != TRAILER_MAGIC or tdata != data_bytes:
        raise fail(f"corrupted or truncated {what}: bad trailer")
    if verify:
        h = hashlib.sha256()
        end = size - TRAILER_SIZE
        for i in range(0, end, 1 << 24):
            h.update(buf[i:min(end, i + (1 << 24))])
        if h.digest() != digest:
            raise fail(f"corrupted {what}: SHA-256 checksum mismatch")
    return header, buf, data_start, data_bytes


def is_int(v) -> bool:
    """A JSON integer (not a bool, not a float)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def field_error(path, what: str, field: str, msg: str) -> PoppinsError:
    """The one shape of a format error: ``FILE: corrupted WHAT: field FIELD: MSG``."""
    return PoppinsError(f"corrupted {what}: field {field}: {msg}", file=str(path))


def check_table(path, what: str, table, data_bytes: int,
                nbytes_of: Callable[[Any, Tuple[int, ...], Dict[str, Any]], Optional[int]],
                key: str = "tensors") -> List[Dict[str, Any]]:
    """Check a section table (a list of {"name", "dtype", "shape", "offset", "nbytes", ...})
    before anything is allocated: every field typed, shapes non-negative and at most MAX_NDIM
    long, offsets non-negative and ALIGN-aligned, every section inside the data and no two
    non-empty sections overlapping, names unique, and ``nbytes`` equal to what
    ``nbytes_of(dtype, shape, entry)`` says (None: the dtype is unknown).  Returns the entries
    with ``shape`` as a tuple; raises the PoppinsError of the first bad field."""
    if not isinstance(table, list):
        raise field_error(path, what, key, f"not a list (got {type(table).__name__})")
    out: List[Dict[str, Any]] = []
    names = set()
    for i, e in enumerate(table):
        where = f"{key}[{i}]"
        if not isinstance(e, dict):
            raise field_error(path, what, where, "not an object")
        name = e.get("name")
        if not isinstance(name, str) or not name:
            raise field_error(path, what, f"{where}.name", f"not a non-empty string "
                              f"(got {_short(name)})")
        where = f"{key}[{i}] ({_short(name)})"
        if name in names:
            raise field_error(path, what, f"{where}.name", "a duplicate name")
        names.add(name)
        shape = e.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(is_int(d) and d >= 0 for d in shape)):
            raise field_error(path, what, f"{where}.shape", f"not a list of at most {MAX_NDIM} "
                              f"non-negative integers (got {_short(shape)})")
        shape = tuple(shape)
        offset, nbytes = e.get("offset"), e.get("nbytes")
        for f, v in (("offset", offset), ("nbytes", nbytes)):
            if not is_int(v) or v < 0:
                raise field_error(path, what, f"{where}.{f}", f"not a non-negative integer "
                                  f"(got {_short(v)})")
        if offset % ALIGN or offset + nbytes > data_bytes:
            raise field_error(path, what, f"{where}.offset", f"section [{offset}, "
                              f"{offset + nbytes}) outside the data ({data_bytes} bytes) or "
                              f"not {ALIGN}-aligned")
        dtype = e.get("dtype")
        want = nbytes_of(dtype, shape, e) if isinstance(dtype, str) else None
        if want is None:
            raise field_error(path, what, f"{where}.dtype", f"unknown dtype {_short(dtype)}")
        if nbytes != want:
            raise field_error(path, what, f"{where}.nbytes", f"{nbytes} bytes do not hold a "
                              f"{dtype} {list(shape)} array ({want} bytes)")
        out.append(dict(e, shape=shape))
    spans = sorted((e["offset"], e["offset"] + e["nbytes"], e["name"]) for e in out
                   if e["nbytes"])
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise field_error(path, what, key, f"sections {n0!r} and {n1!r} overlap")
    return out


def array_nbytes(dtype, shape: Tuple[int, ...], _entry=None) -> Optional[int]:
    """Bytes of a C-order array of ``ARRAY_DTYPES[dtype]`` (None: not an allowed dtype)."""
    dt = ARRAY_DTYPES.get(dtype)
    if dt is None:
        return None
    return dt.itemsize * math.prod(shape)


def write_container(path, magic: bytes, version: int, header: Mapping[str, Any],
                    arrays: Mapping[str, np.ndarray]) -> None:
    """Named arrays (any dtype, C order, little-endian) after ``header``'s fields."""
    blobs = []
    for a in arrays.values():
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        blobs.append(a)
    offsets, data_bytes = section_offsets(b.nbytes for b in blobs)
    table = [{"name": n, "dtype": b.dtype.str, "shape": list(b.shape), "offset": o,
              "nbytes": int(b.nbytes)} for n, b, o in zip(arrays, blobs, offsets)]
    write_frame(path, magic, version, dict(header, arrays=table, data_bytes=data_bytes), blobs)


def read_container(path, magic: bytes, version: int, what: str,
                   verify: bool = True) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of a container file; arrays are read-only memmap views."""
    header, buf, data_start, data_bytes = read_frame(path, magic, version, what, verify=verify)
    table = check_table(path, what, header.get("arrays"), data_bytes, array_nbytes,
                        key="arrays")
    arrays = {}
    for e in table:
        start, n = data_start + e["offset"], e["nbytes"]
        arrays[e["name"]] = buf[start:start + n].view(ARRAY_DTYPES[e["dtype"]]).reshape(e["shape"])
    return header, arrays

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
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from .errors import PoppinsError
from .fileio import atomic_open

TRAILER_MAGIC = b"POPPSUM\x00"
ALIGN = 64
PREFIX = struct.Struct("<8sIIQ")    # magic, version, reserved, header length
TRAILER = struct.Struct("<8sQ32s")  # trailer magic, data bytes, sha256
PREFIX_SIZE, TRAILER_SIZE = PREFIX.size, TRAILER.size
MAX_HEADER = 1 << 31


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
    data_start = align(PREFIX_SIZE + hlen)
    try:
        data_bytes = int(header["data_bytes"])
    except (KeyError, TypeError, ValueError):
        raise fail(f"corrupted {what}: the header has no valid 'data_bytes'") from None
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
    arrays = {}
    for e in header.get("arrays", []):
        start, n = data_start + int(e["offset"]), int(e["nbytes"])
        if int(e["offset"]) + n > data_bytes:
            raise PoppinsError(f"corrupted {what}: array {e['name']} lies outside the data",
                               file=str(path))
        arrays[e["name"]] = buf[start:start + n].view(np.dtype(e["dtype"])).reshape(e["shape"])
    return header, arrays

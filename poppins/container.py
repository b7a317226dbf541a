"""A small binary container shared by poppins' own formats (checkpoints, ...).

Layout (little-endian)::

    0       8   magic (8 bytes, names the format)
    8       4   u32 format version
    12      4   u32 reserved (0)
    16      8   u64 header length H
    24      H   JSON header (UTF-8): the caller's fields plus "arrays": [{name, dtype, shape,
                offset, nbytes}], offsets relative to data_start
    ...         zero padding to data_start, a multiple of 64
    data        arrays, each 64-byte aligned, C order
    end-48  8   trailer magic b"POPPSUM\\0"
    end-40  8   u64 data length
    end-32  32  SHA-256 of every byte before the trailer

Writes are atomic (temporary name, fsync, rename).  ``read_container`` checks the magic, the
version, the sizes and the checksum, and raises PoppinsError naming the file and the problem.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Tuple

import numpy as np

from .errors import PoppinsError
from .fileio import atomic_open

TRAILER_MAGIC = b"POPPSUM\x00"
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")
_TRAILER = struct.Struct("<8sQ32s")
_MAX_HEADER = 1 << 30


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_container(path, magic: bytes, version: int, header: Mapping[str, Any],
                    arrays: Mapping[str, np.ndarray]) -> None:
    assert len(magic) == 8
    table, blobs, off = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        table.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                      "offset": off, "nbytes": int(a.nbytes)})
        blobs.append(a)
        off = _align(off + a.nbytes)
    data_len = off
    head = json.dumps(dict(header, arrays=table), sort_keys=True, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(magic, version, 0, len(head))
    data_start = _align(len(prefix) + len(head))
    h = hashlib.sha256()
    with atomic_open(path, "wb") as f:
        def put(b) -> None:
            h.update(b)
            f.write(b)
        put(prefix)
        put(head)
        put(b"\0" * (data_start - len(prefix) - len(head)))
        pos = 0
        for entry, a in zip(table, blobs):
            put(b"\0" * (entry["offset"] - pos))
            put(memoryview(a).cast("B"))
            pos = entry["offset"] + a.nbytes
        put(b"\0" * (data_len - pos))
        f.write(_TRAILER.pack(TRAILER_MAGIC, data_len, h.digest()))


def read_container(path, magic: bytes, versions: Iterable[int], what: str,
                   verify: bool = True) -> Tuple[int, Dict[str, Any], Dict[str, np.ndarray]]:
    """(version, header, arrays) of a container file; arrays are read-only memmap views."""
    path = Path(path)

    def fail(msg: str) -> PoppinsError:
        return PoppinsError(f"{path}: {msg}")

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise fail(f"cannot read {what} ({exc.strerror})") from None
    if size < _PREFIX.size + _TRAILER.size:
        raise fail(f"not a poppins {what} (file too short: {size} bytes; truncated?)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    got_magic, version, _, hlen = _PREFIX.unpack(bytes(buf[:_PREFIX.size]))
    if got_magic != magic:
        raise fail(f"not a poppins {what} (magic {got_magic!r}, expected {magic!r})")
    versions = tuple(versions)
    if version not in versions:
        raise fail(f"{what} format version {version} is not supported by this poppins "
                   f"(supported: {', '.join(map(str, versions))})")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen + _TRAILER.size > size:
        raise fail(f"{what} is truncated or corrupted (header length {hlen})")
    tmagic, data_len, digest = _TRAILER.unpack(bytes(buf[size - _TRAILER.size:]))
    data_start = _align(_PREFIX.size + hlen)
    if tmagic != TRAILER_MAGIC or data_start + data_len + _TRAILER.size != size:
        raise fail(f"{what} is truncated or corrupted (bad trailer)")
    if verify:
        h = hashlib.sha256()
        body = size - _TRAILER.size
        for s in range(0, body, 1 << 24):
            h.update(memoryview(buf[s:min(body, s + (1 << 24))]))
        if h.digest() != digest:
            raise fail(f"{what} is corrupted (checksum mismatch)")
    try:
        header = json.loads(bytes(buf[_PREFIX.size:_PREFIX.size + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise fail(f"{what} header is not valid JSON (corrupted?)") from None
    arrays = {}
    for e in header.get("arrays", []):
        dt = np.dtype(e["dtype"])
        start = data_start + int(e["offset"])
        if start + int(e["nbytes"]) > data_start + data_len:
            raise fail(f"{what} array {e['name']} lies outside the data (corrupted?)")
        a = buf[start:start + int(e["nbytes"])].view(dt).reshape(e["shape"])
        arrays[e["name"]] = a
    return version, header, arrays

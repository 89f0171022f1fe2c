"""The experience memory's index snapshot: what is expensive to rebuild, kept on disk.

Opening a memory without it rebuilds the FAISS index and every row's neighbour list from
the Parquet vectors: an all-pairs k-NN, 10-45 s at 100 000 rows and minutes at 1 000 000
on 2 cores. With it, opening reads one file. `<memory>/snapshot.bin`::

    b"SAIRSNP1"                   magic (format 1)
    <u32 length> <u32 crc32>      of the manifest that follows
    manifest, JSON                what the snapshot covers, and where its sections are
    sections                      raw arrays, each with its own crc32 in the manifest:
                                  nbr, nd2, ver (the neighbour lists, see memory.py) and,
                                  beyond the exact limit, the serialised HNSW index

An exact `IndexFlatL2` is not stored: it is a copy of the vectors, rebuilt by a memcpy.

What it covers: the first `rows` rows of the memory. The index and the lists are functions
of those rows' phi vectors, in row order, and of the parameters in `key` (dimension, loo_k,
index kind, HNSW parameters); the manifest records the key and the crc32 of those vectors,
and a reader accepts the snapshot only if both match the memory being opened. Rows added
after it was written (a crash after some adds) are then indexed and linked incrementally
by the memory; anything else (a compaction it missed, a new config) means a rebuild.

Crash safety: written to a temporary file, fsync'ed, renamed over the old one, directory
fsync'ed; a crash leaves the old snapshot or the new one, never a torn one. A file damaged
anyway (disk, stray writer) fails a checksum, a size or a shape check, and the memory
rebuilds: a bad snapshot never fails an open, it only makes it slower.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from sair_ray.files import private_open

FILENAME = "snapshot.bin"
MAGIC = b"SAIRSNP1"
FORMAT = 1
_HEADER = struct.Struct("<8sII")  # magic, manifest length, manifest crc32
# dtype of each list section; the index section is the bytes faiss serialises
_DTYPES: dict[str, np.dtype[Any]] = {
    "nbr": np.dtype("<i8"), "nd2": np.dtype("<f4"), "ver": np.dtype("<i8")}


class SnapshotError(Exception):
    """The snapshot cannot be used (damaged, or made for other data); the memory rebuilds."""


@dataclass(frozen=True)
class Snapshot:
    rows: int                  # it covers rows [0, rows) of the memory
    nbr: np.ndarray            # (rows, loo_k) int64
    nd2: np.ndarray            # (rows, loo_k) float32
    ver: np.ndarray            # (rows,) int64
    index: faiss.IndexHNSWFlat | None  # the HNSW index; None while the index is exact


def crc32(a: np.ndarray) -> int:
    # .data: the array's memoryview (numpy types ndarray as a Buffer only on Python 3.12+)
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, key: dict[str, Any], vectors: np.ndarray, nbr: np.ndarray,
          nd2: np.ndarray, ver: np.ndarray, index: faiss.Index | None, *,
          fsync: bool) -> int:
    """Write the snapshot of `vectors`' rows crash-safely (module docstring); its size."""
    sections = {"nbr": nbr, "nd2": nd2, "ver": ver}
    if index is not None:
        sections["index"] = faiss.serialize_index(index)  # a uint8 array
    sections = {name: np.ascontiguousarray(a) for name, a in sections.items()}
    layout, offset = [], 0
    for name, a in sections.items():  # offsets count from the end of the manifest
        layout.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                       "offset": offset, "length": a.nbytes, "crc32": crc32(a)})
        offset += a.nbytes
    body = json.dumps({"format": FORMAT, "key": key, "rows": len(vectors),
                       "vectors_crc32": crc32(vectors), "written_at": time.time(),
                       "sections": layout}).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with private_open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, len(body), zlib.crc32(body)))
            f.write(body)
            for a in sections.values():
                f.write(a.reshape(-1).view(np.uint8).data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return _HEADER.size + len(body) + offset


def read(path: Path, key: dict[str, Any], vectors: np.ndarray) -> Snapshot:
    """The snapshot at `path` if it was made for `key` and covers a prefix of `vectors`.

    Raises SnapshotError (saying why) otherwise. The cheap checks (manifest checksum, key,
    coverage) come before the big reads, so a snapshot for other data costs ~nothing."""
    try:
        with open(path, "rb") as f:
            return _read(f, os.fstat(f.fileno()).st_size, key, vectors)
    except FileNotFoundError:
        raise SnapshotError("there is none") from None
    except OSError as e:
        raise SnapshotError(f"cannot be read ({e})") from None
    except (KeyError, TypeError, ValueError, MemoryError) as e:  # not what `write` wrote
        raise SnapshotError(f"malformed ({e!r})") from None


def _read(f: Any, size: int, key: dict[str, Any], vectors: np.ndarray) -> Snapshot:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise SnapshotError(f"truncated ({size} bytes)")
    magic, length, want = _HEADER.unpack(head)
    if magic != MAGIC:
        raise SnapshotError("not a snapshot file (bad magic)")
    body = f.read(length)
    if len(body) != length or zlib.crc32(body) != want:
        raise SnapshotError("manifest checksum mismatch (damaged or truncated)")
    m = json.loads(body)
    if m.get("format") != FORMAT:
        raise SnapshotError(f"format {m.get('format')}, this version reads {FORMAT}")
    if m["key"] != key:
        raise SnapshotError(f"made for {m['key']}, this memory needs {key}")
    rows = int(m["rows"])
    if not 0 < rows <= len(vectors):
        raise SnapshotError(f"covers {rows} rows, the memory has {len(vectors)}")
    if crc32(vectors[:rows]) != m["vectors_crc32"]:
        raise SnapshotError(f"its {rows} rows' vectors differ from the memory's (rewritten "
                            "since, e.g. by a compaction)")
    base = _HEADER.size + length
    end = base + sum(s["length"] for s in m["sections"])
    if size != end:
        raise SnapshotError(f"{size} bytes, its manifest describes {end} (truncated?)")
    arrays = {s["name"]: _section(f, base, s) for s in m["sections"]}
    return _checked(arrays, rows, key)


def _section(f: Any, base: int, s: dict[str, Any]) -> np.ndarray:
    dtype: np.dtype[Any] = _DTYPES.get(s["name"], np.dtype(np.uint8))
    if np.dtype(s["dtype"]) != dtype:
        raise SnapshotError(f"section {s['name']} has dtype {s['dtype']}, expected {dtype.str}")
    a = np.empty(s["shape"], dtype=dtype)
    if a.nbytes != s["length"]:
        raise SnapshotError(f"section {s['name']}: shape and length disagree")
    f.seek(base + s["offset"])
    if f.readinto(a.reshape(-1).view(np.uint8)) != a.nbytes:
        raise SnapshotError(f"section {s['name']} truncated")
    if crc32(a) != s["crc32"]:
        raise SnapshotError(f"section {s['name']} checksum mismatch (damaged)")
    return a


def _deserialize(buf: np.ndarray) -> faiss.Index:
    """The index serialised in `buf`. `faiss.deserialize_index` first copies the buffer into
    a zero-filled std::vector (0.8 s of a 2 s load at 1 000 000 rows); a reader callback
    hands faiss slices of it instead."""
    view, pos = buf.data, 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = view[pos:pos + n].tobytes()
        pos += len(chunk)
        return chunk

    # faiss's stubs omit the Python-side PyCallbackIOReader (faiss/python/__init__.py)
    return faiss.read_index(faiss.PyCallbackIOReader(read))  # type: ignore[attr-defined]


def _checked(arrays: dict[str, np.ndarray], rows: int, key: dict[str, Any]) -> Snapshot:
    k = key["loo_k"]
    try:
        nbr, nd2, ver = arrays["nbr"], arrays["nd2"], arrays["ver"]
    except KeyError as e:
        raise SnapshotError(f"section {e} missing") from None
    if nbr.shape != (rows, k) or nd2.shape != (rows, k) or ver.shape != (rows,):
        raise SnapshotError(f"neighbour lists are not ({rows}, {k})")
    # Checksums prove the bytes are the ones written; ranges guard against a writer's bug
    # turning into an IndexError in a later round.
    if nbr.min() < -1 or nbr.max() >= rows or ver.min() < 0 or ver.max() > rows:
        raise SnapshotError("neighbour lists point outside the rows covered")
    index: faiss.IndexHNSWFlat | None = None
    if key["index"] == "hnsw":
        if "index" not in arrays:
            raise SnapshotError("section index missing")
        try:
            loaded = _deserialize(arrays["index"])
        except RuntimeError as e:
            raise SnapshotError(f"index cannot be deserialised ({e})") from None
        if not isinstance(loaded, faiss.IndexHNSWFlat) or loaded.ntotal != rows or \
                loaded.d != key["dim"]:
            raise SnapshotError(f"index is a {type(loaded).__name__} of {loaded.ntotal} x "
                                f"{loaded.d}, expected IndexHNSWFlat of {rows} x {key['dim']}")
        index = loaded
    return Snapshot(rows, nbr, nd2, ver, index)

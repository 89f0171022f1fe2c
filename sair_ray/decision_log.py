"""The decision log: one JSON line per event, exported to Parquet for analysis.

Two kinds of line: `{"kind": "decision", ...}` when a round acts, and
`{"kind": "reward", "round": n, ...}` one round later, when that action's outcome is
seen. The host adds its events (`Controller.note`): `round_failed`, `external` (a change
SAIR did not make), `actuation_error`, and in Serve-native mode `serve_modes` (the
deployments' modes, at each change). Lines are flushed as they are written, so a crash
loses at most the line being written; `read` skips a torn final line.

The log rotates by size: before a line would take `decisions.jsonl` past `max_bytes`, the
file becomes `decisions.jsonl.1` (the previous `.1` becomes `.2`, ...), and at most
`max_files` files are kept, the current one included (`decision_log.max_mb` and
`decision_log.max_files` in the config; 50 MB x 5 by default). `log_files(path)` lists a
log's files oldest first, `read_all` reads them in that order.

A write that fails (a full disk) raises, so the host counts its round as failed; the
file is closed, and the next write first cuts whatever part of the failed line reached
the disk, so the log stays one JSON record per line.

The files are the user's own (mode 0600, a missing directory is made 0700:
`sair_ray.files`): records carry the model's replies and the pipeline's metrics.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sair_ray.files import private_dir, private_open


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become strings, unknown objects their repr."""
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if x is None or isinstance(x, bool | int | str):
        return x
    return repr(x)


def _drop_torn_tail(path: Path) -> None:
    """Cut a line a crash left half-written, so appending after a restart cannot glue a new
    record onto it and make the middle of the file unreadable."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_FILES = 5


def rotated(path: str | Path, i: int) -> Path:
    """The `i`-th rotated file of the log at `path` (1 = the newest): `decisions.jsonl.1`."""
    p = Path(path)
    return p.with_name(f"{p.name}.{i}")


def log_files(path: str | Path) -> list[Path]:
    """The files of the log at `path`, oldest first: the rotated ones (`.N` ... `.1`) that
    exist, then `path` itself (whether it exists or not)."""
    p = Path(path)
    older = []
    i = 1
    while rotated(p, i).is_file():
        older.append(rotated(p, i))
        i += 1
    return [*reversed(older), p]


class DecisionLog:
    """Appends records to `path` (None: writes nothing), rotating by size: see above.
    `max_bytes` 0 never rotates."""

    def __init__(self, path: str | Path | None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_files: int = DEFAULT_MAX_FILES) -> None:
        self.path = Path(path) if path is not None else None
        self._f: Any = None
        self._size = 0
        self.max_bytes, self.max_files = DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES
        self.set_rotation(max_bytes, max_files)
        if self.path is not None:
            private_dir(self.path.parent)
            self._open()

    def set_rotation(self, max_bytes: int, max_files: int) -> None:
        """Rotate before the file would pass `max_bytes` (0: never), keep `max_files`."""
        if max_bytes < 0 or max_files < 1:
            raise ValueError(f"max_bytes must be >= 0 and max_files >= 1, got {max_bytes}, "
                             f"{max_files}")
        self.max_bytes, self.max_files = int(max_bytes), int(max_files)

    def _open(self) -> None:
        assert self.path is not None
        _drop_torn_tail(self.path)  # also what a failed write left
        self._f = private_open(self.path, "ab", buffering=0)  # 0600; open for its lifetime
        self._size = os.fstat(self._f.fileno()).st_size

    def write(self, kind: str, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = (json.dumps(_clean({"kind": kind, **record}), separators=(",", ":"))
                + "\n").encode()
        try:
            if self._f is None:
                self._open()  # after a failed write (or a close)
            if self.max_bytes and self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            view = memoryview(data)
            while view:
                n = self._f.write(view)
                self._size += n
                view = view[n:]
        except OSError:
            self._drop_file()
            raise

    def _rotate(self) -> None:
        assert self.path is not None
        self._f.close()
        self._f = None
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
        else:
            rotated(self.path, self.max_files - 1).unlink(missing_ok=True)
            for i in range(self.max_files - 2, 0, -1):
                if rotated(self.path, i).exists():
                    os.replace(rotated(self.path, i), rotated(self.path, i + 1))
            os.replace(self.path, rotated(self.path, 1))
        for i in range(self.max_files, 10_000):  # files a larger max_files left behind
            if not rotated(self.path, i).exists():
                break
            rotated(self.path, i).unlink()
        self._open()

    def _drop_file(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            f.close()

    @staticmethod
    def read(path: str | Path) -> Iterator[dict[str, Any]]:
        """The records of the one file `path` (not its rotated files: `read_all`)."""
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn final line
                yield json.loads(line)

    @classmethod
    def read_all(cls, path: str | Path) -> Iterator[dict[str, Any]]:
        """The records of the log at `path` with its rotated files, oldest first."""
        for p in log_files(path):
            if p.is_file():
                yield from cls.read(p)

    @classmethod
    def merged(cls, path: str | Path) -> list[dict[str, Any]]:
        """Decisions with their reward attached (None while not yet known), rotated files
        included."""
        decisions: dict[int, dict[str, Any]] = {}
        for rec in cls.read_all(path):
            if rec["kind"] == "decision":
                decisions[rec["round"]] = rec
            elif rec["kind"] == "reward" and rec["round"] in decisions:
                decisions[rec["round"]]["reward"] = rec["reward"]
        return [decisions[k] for k in sorted(decisions)]

    @classmethod
    def to_parquet(cls, path: str | Path, out: str | Path) -> Path:
        """Flat table: scalar fields as columns, nested ones as JSON strings."""
        rows = []
        for d in cls.merged(path):
            rows.append({k: (json.dumps(v) if isinstance(v, dict | list) else v)
                         for k, v in d.items() if k != "kind"})
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, out)
        return Path(out)

"""The decision log: one JSON line per event, exported to Parquet for analysis.

Two kinds of line: `{"kind": "decision", ...}` when a round acts, and
`{"kind": "reward", "round": n, ...}` one round later, when that action's outcome is
seen. Lines are flushed as they are written, so a crash loses at most the line being
written; `read` skips a torn final line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


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


class DecisionLog:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._f = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(self.path)
            self._f = open(self.path, "a")  # noqa: SIM115 - open for the log's lifetime

    def write(self, kind: str, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(_clean({"kind": kind, **record}), separators=(",", ":")))
        self._f.write("\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    @staticmethod
    def read(path: str | Path) -> Iterator[dict[str, Any]]:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn final line
                yield json.loads(line)

    @classmethod
    def merged(cls, path: str | Path) -> list[dict[str, Any]]:
        """Decisions with their reward attached (None while not yet known)."""
        decisions: dict[int, dict[str, Any]] = {}
        for rec in cls.read(path):
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

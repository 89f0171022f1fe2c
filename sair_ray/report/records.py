"""Finding and reading decision logs for `sair decisions` and `sair report`.

A log is named by a path (the `decisions.jsonl` file, or a directory holding one, such as
a live app's data dir or a run's output dir) or by a Serve app name, which resolves to
`<data dir>/<app>/decisions.jsonl` exactly as the live controller writes it
(`sair_ray.files.ControllerFiles`). Records are the log's decisions with their reward
merged in (`DecisionLog.merged`), plus the other events (external changes, actuation
errors, failed rounds). A log that rotated (`decisions.jsonl.1`, `.2`, ... next to it,
`sair_ray.decision_log`) is read with its rotated files, oldest first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sair_ray.decision_log import log_files
from sair_ray.files import LOG_FILE, app_data_dir, base_data_dir


class LogError(ValueError):
    """No readable decision log where the user pointed."""


@dataclass
class DecisionRecords:
    """One log, read: `decisions` in round order (each with `reward` once known) and the
    other events in file order."""

    path: Path
    decisions: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    remembered: int = 0         # rewards whose experience went into memory

    @property
    def app(self) -> str:
        return str(self.decisions[0].get("app", "")) if self.decisions else ""

    def last(self, n: int) -> list[dict[str, Any]]:
        return self.decisions[-n:] if n > 0 else list(self.decisions)


def resolve(target: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The decision log `target` names: a file, a directory with one, or an app name."""
    p = Path(target).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        direct = p / LOG_FILE
        if direct.is_file():
            return direct
        found = sorted(p.rglob(LOG_FILE)) or sorted(p.rglob("*.jsonl"))
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(str(f) for f in found[:5])
            raise LogError(f"{p} holds {len(found)} decision logs ({listed}"
                           f"{', ...' if len(found) > 5 else ''}); name one of them")
        raise LogError(f"no {LOG_FILE} under {p}")
    if os.sep in target or target.endswith(".jsonl"):
        raise LogError(f"{target} does not exist")
    try:
        app_log = app_data_dir(target, base) / LOG_FILE
    except ValueError as e:
        raise LogError(str(e)) from None
    if app_log.is_file():
        return app_log
    raise LogError(f"{target!r} is neither a file nor a directory, and app {target!r} has no "
                   f"decision log at {app_log} (data dir {base_data_dir(base)}; set "
                   "$SAIR_DATA_DIR to the controller's)")


def load(path: str | os.PathLike[str]) -> DecisionRecords:
    """Read a decision log with its rotated files (as `DecisionLog.merged` does, a torn
    final line skipped); a line that is not a log record is an error that names its file
    and line number."""
    return LogReader(path).read()


class LogReader:
    """Reads a decision log, and on each later `read()` only the lines appended since, so
    following a live log (`sair top`) costs what it grew by. `keep` bounds the decisions
    held to the latest rounds; `remembered` counts over the files read.

    The first read takes the rotated files too, oldest first (with `keep`, only as many
    of the newest rotated files as hold `keep` decisions). A log that rotated between two
    reads is followed: the rest of the file last read (now `.1`, or further back) comes
    first, then the new file. A log replaced meanwhile (a bench rerun) is read again from
    its start."""

    def __init__(self, path: str | os.PathLike[str], keep: int | None = None) -> None:
        self.path = Path(path)
        self.keep = keep
        self._start()

    def _start(self, inode: int = -1) -> None:
        self._inode = inode
        self._offset = 0
        self._cur_lines = 0        # lines read from the current file
        self._lineno = 0           # line being read in `_where`, for error messages
        self._where = self.path
        self._decisions: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self.remembered = 0

    def read(self) -> DecisionRecords:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if self._inode == -1 or (st.st_ino == self._inode and st.st_size < self._offset):
                    self._start()
                    for older in self._history():
                        self._read_file(older, 0)
                    self._inode = st.st_ino
                elif st.st_ino != self._inode:
                    self._follow_rotation()
                    self._inode, self._offset, self._cur_lines = st.st_ino, 0, 0
                self._where, self._lineno = self.path, self._cur_lines
                self._offset = self._consume(f, self._offset)
                self._cur_lines = self._lineno
        except OSError as e:
            raise LogError(f"cannot read {self.path}: {e}") from None
        if self.keep is not None:
            for k in sorted(self._decisions)[:-self.keep or None]:
                del self._decisions[k]
            del self._events[:-self.keep or None]
        return DecisionRecords(self.path, [self._decisions[k] for k in sorted(self._decisions)],
                               list(self._events), self.remembered)

    def _history(self) -> list[Path]:
        """The rotated files to read before the current one, oldest first."""
        older = log_files(self.path)[:-1]
        if self.keep is None:
            return older
        wanted, n = [], 0
        for p in reversed(older):  # newest first, until they hold `keep` decisions
            if n >= self.keep:
                break
            wanted.append(p)
            with open(p, "rb") as f:
                n += sum(line.startswith(b'{"kind":"decision"') for line in f)
        return wanted[::-1]

    def _follow_rotation(self) -> None:
        """The file last read was rotated away: read its rest and any newer rotated file;
        if it is gone (replaced, or rotated past the kept files), start over."""
        older = log_files(self.path)[:-1]
        at = next((i for i, p in enumerate(older) if _inode(p) == self._inode), None)
        if at is None:
            self._start()
            for p in older:
                self._read_file(p, 0)
            return
        self._read_file(older[at], self._offset, self._cur_lines)
        for p in older[at + 1:]:
            self._read_file(p, 0)

    def _read_file(self, path: Path, offset: int, lineno: int = 0) -> None:
        self._where, self._lineno = path, lineno
        with open(path, "rb") as f:
            self._consume(f, offset)

    def _consume(self, f: Any, offset: int) -> int:
        """Add the whole lines of `f` from `offset`; the offset after the last one."""
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn final line: the controller is writing it
            offset += len(line)
            self._lineno += 1
            if line.strip():
                self._add(line)
        return offset

    def _add(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            kind = rec["kind"]
            if kind == "decision":
                self._decisions[int(rec["round"])] = rec
            elif kind == "reward":
                self.remembered += bool(rec["reward"].get("stored"))
                if int(rec["round"]) in self._decisions:
                    self._decisions[int(rec["round"])]["reward"] = rec["reward"]
            else:
                self._events.append(rec)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise LogError(f"{self._where}:{self._lineno}: not a decision log record "
                           f"({type(e).__name__}: {e})") from None


def _inode(p: Path) -> int | None:
    try:
        return os.stat(p).st_ino
    except OSError:
        return None


def num(x: Any) -> float:
    """A logged number as float: the log writes non-finite floats as strings ('inf')."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")

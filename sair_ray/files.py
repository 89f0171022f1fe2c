"""The files a controller keeps, where, and crash-safe JSON writes.

The data dir is `$SAIR_DATA_DIR` if set, else `~/.local/share/sair-ray` (`base_data_dir`).
One controller's directory (`ControllerFiles.in_dir`; a live app's is `app_data_dir(app)`,
an operator resource's `<data dir>/k8s/<namespace>/<name>/`); on a multi-node cluster the
controller actor runs on the head node, so these paths are on the head node:

    memory/            experience memory (Parquet segments + journal, sair_ray.memory)
    state.json         Controller.state() and who saved it, rewritten atomically every round
    decisions.jsonl    decision log (sair_ray.decision_log)
    applying.json      while an action is being applied (live only): its write-ahead record
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "SAIR_DATA_DIR"
MEMORY_DIR = "memory"
STATE_FILE = "state.json"
LOG_FILE = "decisions.jsonl"
INTENT_FILE = "applying.json"


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def base_data_dir(base: str | os.PathLike[str] | None = None) -> Path:
    if base is not None:
        return Path(base).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "sair-ray"


def app_data_dir(app: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The app's directory (app names are Serve names; anything odd becomes `_`)."""
    if not app:
        raise ValueError("app name must be non-empty")
    return base_data_dir(base) / _SAFE.sub("_", app)


@dataclass(frozen=True)
class ControllerFiles:
    """Where one controller keeps what outlives a round; None: not kept (a bench run keeps
    its memory in a temporary directory and its log, if any, elsewhere)."""

    memory: Path | None = None   # experience memory directory (policies that learn)
    state: Path | None = None    # state.json
    log: Path | None = None      # decisions.jsonl
    intent: Path | None = None   # applying.json

    @classmethod
    def in_dir(cls, root: str | os.PathLike[str]) -> ControllerFiles:
        """The layout above, in `root`."""
        r = Path(root)
        return cls(r / MEMORY_DIR, r / STATE_FILE, r / LOG_FILE, r / INTENT_FILE)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a reader (or a restart after a crash) sees the old file or the
    new one, never a torn one: temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"), allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None if it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

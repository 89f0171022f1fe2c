"""The files a controller keeps, where, and crash-safe JSON writes.

The data dir is `$SAIR_DATA_DIR` if set, else `~/.local/share/sair-ray` (`base_data_dir`).
One controller's directory (`ControllerFiles.in_dir`; a live app's is `app_data_dir(app)`,
an operator resource's `<data dir>/k8s/<namespace>/<name>/`); on a multi-node cluster the
controller actor runs on the head node, so these paths are on the head node:

    memory/            experience memory (Parquet segments + journal, sair_ray.memory)
    state.json         Controller.state() and who saved it, rewritten atomically every round
    decisions.jsonl    decision log (sair_ray.decision_log)
    applying.json      while an action is being applied (live only): its write-ahead record

Only the user running the controller can read them: directories SAIR creates are 0700,
files 0600 (`private_dir`, `private_open`), and a controller's directory that already
exists with wider permissions is narrowed when the session opens it, if this user owns
it. Names become one path component each (`path_component`): a name with `/`, `..`,
spaces or other odd characters can neither leave the data dir nor share another name's
directory.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "SAIR_DATA_DIR"
MEMORY_DIR = "memory"
STATE_FILE = "state.json"
LOG_FILE = "decisions.jsonl"
INTENT_FILE = "applying.json"

DIR_MODE = 0o700
FILE_MODE = 0o600

# Characters a path component keeps as they are; every other byte is %XX-escaped.
_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def path_component(name: str) -> str:
    """`name` as one file name, injectively: letters, digits, `.`, `_` and `-` stay,
    every other byte of its UTF-8 (`/`, spaces, `%` itself ...) becomes `%XX`, and a
    leading `.` becomes `%2E` (so no name is `.`, `..` or hidden). Names made of the kept
    characters only (every Kubernetes name, the usual Serve app names) map to themselves."""
    if not name:
        raise ValueError("a name used as a path must be non-empty")
    raw = name.encode("utf-8", errors="surrogatepass")
    out = "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in raw)
    if out.startswith("."):
        out = "%2E" + out[1:]
    return out


def base_data_dir(base: str | os.PathLike[str] | None = None) -> Path:
    if base is not None:
        return Path(base).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "sair-ray"


def app_data_dir(app: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The app's directory: one component under the data dir (`path_component`)."""
    if not app:
        raise ValueError("app name must be non-empty")
    return base_data_dir(base) / path_component(app)


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Make `path` and any missing parents with mode 0700 (whatever the umask). With
    `tighten`, an existing `path` this user owns loses its group and other permissions;
    one owned by someone else is left as it is."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:   # made meanwhile by another process
            continue
        os.chmod(d, DIR_MODE)     # mkdir's mode is narrowed by the umask, never widened
    if tighten and not missing:
        st = p.stat()
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(p, stat.S_IMODE(st.st_mode) & DIR_MODE)
    return p


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """`open(..., opener=private_opener)`: a new file gets mode 0600; an existing one this
    user owns loses its group and other permissions."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_open(path: str | os.PathLike[str], mode: str, **kw: Any) -> Any:
    """`open(path, mode)` with `private_opener`."""
    return open(path, mode, opener=private_opener, **kw)  # noqa: SIM115 - the caller closes


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename (or a new file) in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ControllerFiles:
    """Where one controller keeps what outlives a round; None: not kept (a bench run keeps
    its memory in a temporary directory and its log, if any, elsewhere)."""

    memory: Path | None = None   # experience memory directory (policies that learn)
    state: Path | None = None    # state.json
    log: Path | None = None      # decisions.jsonl
    intent: Path | None = None   # applying.json
    root: Path | None = None     # the directory of the layout above, when it is one

    @classmethod
    def in_dir(cls, root: str | os.PathLike[str]) -> ControllerFiles:
        """The layout above, in `root`."""
        r = Path(root)
        return cls(r / MEMORY_DIR, r / STATE_FILE, r / LOG_FILE, r / INTENT_FILE, r)

    def prepare(self) -> None:
        """Create the controller's directory (0700), or narrow it if it exists."""
        if self.root is not None:
            private_dir(self.root, tighten=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a reader (or a restart after a crash) sees the old file or the
    new one, never a torn one: temp file (0600) in the same directory, fsync, rename,
    fsync of the directory (so the rename itself survives a power loss)."""
    private_dir(path.parent)
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
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None if it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

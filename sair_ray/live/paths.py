"""Where an attached controller keeps its files: `app_data_dir(app)`, laid out as
`sair_ray.files.ControllerFiles` says (memory/, state.json, decisions.jsonl).

The data dir is `$SAIR_DATA_DIR` if set, else `~/.local/share/sair-ray`. On a multi-node
cluster the controller actor runs on the head node, so these paths are on the head node.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DATA_DIR_ENV = "SAIR_DATA_DIR"
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

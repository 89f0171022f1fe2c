"""Finding and reading decision logs for `sair decisions` and `sair report`.

A log is named by a path (the `decisions.jsonl` file, or a directory holding one, such as
a live app's data dir or a run's output dir) or by a Serve app name, which resolves to
`<data dir>/<app>/decisions.jsonl` exactly as the live controller writes it
(`sair_ray.live.paths`). Records are the log's decisions with their reward merged in
(`DecisionLog.merged`), plus the live-only events (external changes, actuation errors).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sair_ray.live.paths import app_data_dir, base_data_dir

LOG_NAME = "decisions.jsonl"


class LogError(ValueError):
    """No readable decision log where the user pointed."""


@dataclass
class DecisionRecords:
    """One log, read: `decisions` in round order (each with `reward` once known) and the
    other events in file order."""

    path: Path
    decisions: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)

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
        direct = p / LOG_NAME
        if direct.is_file():
            return direct
        found = sorted(p.rglob(LOG_NAME)) or sorted(p.rglob("*.jsonl"))
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(str(f) for f in found[:5])
            raise LogError(f"{p} holds {len(found)} decision logs ({listed}"
                           f"{', ...' if len(found) > 5 else ''}); name one of them")
        raise LogError(f"no {LOG_NAME} under {p}")
    if os.sep in target or target.endswith(".jsonl"):
        raise LogError(f"{target} does not exist")
    try:
        app_log = app_data_dir(target, base) / LOG_NAME
    except ValueError as e:
        raise LogError(str(e)) from None
    if app_log.is_file():
        return app_log
    raise LogError(f"{target!r} is neither a file nor a directory, and app {target!r} has no "
                   f"decision log at {app_log} (data dir {base_data_dir(base)}; set "
                   "$SAIR_DATA_DIR to the controller's)")


def load(path: str | os.PathLike[str]) -> DecisionRecords:
    """Read a decision log (as `DecisionLog.merged` does, a torn final line skipped); a
    line that is not a log record is an error that names its line number."""
    path = Path(path)
    decisions: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    try:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn final line: the controller was writing it
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    kind = rec["kind"]
                    if kind == "decision":
                        decisions[int(rec["round"])] = rec
                    elif kind == "reward":
                        if int(rec["round"]) in decisions:
                            decisions[int(rec["round"])]["reward"] = rec["reward"]
                    else:
                        events.append(rec)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise LogError(f"{path}:{lineno}: not a decision log record "
                                   f"({type(e).__name__}: {e})") from None
    except OSError as e:
        raise LogError(f"cannot read {path}: {e}") from None
    return DecisionRecords(path, [decisions[k] for k in sorted(decisions)], events)


def num(x: Any) -> float:
    """A logged number as float: the log writes non-finite floats as strings ('inf')."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")

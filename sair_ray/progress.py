"""The progress of every long command (`sair bench`, `sair load`): one layout, so they read
alike. On a terminal a bar: description, bar, done/total, any command-specific columns,
elapsed, ETA. Elsewhere (a log file, CI, a pipe), where a bar is drawn once at the end,
plain lines with the same content, at most one per `LINE_EVERY_S`, and one at the end."""

from __future__ import annotations

import time
from typing import Any

LINE_EVERY_S = 10.0


def progress_bar(console: Any, *columns: Any) -> Any:
    """A `rich.progress.Progress` on `console` with `columns` after the count, or, when
    `console` is not a terminal, a `ProgressLines` on it; rich is imported here so
    `sair --help` does not pay for it."""
    if not console.is_terminal:
        return ProgressLines(console)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *columns, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console)


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `42s`."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ProgressLines:
    """The part of `rich.progress.Progress` the commands use (`add_task`, `advance`,
    `update`, a context manager), printing lines such as
    `bench: 12/36 done, ok=11 bad=1, 1m20s elapsed, ETA 2m40s`."""

    def __init__(self, console: Any, every_s: float = LINE_EVERY_S,
                 clock: Any = time.monotonic) -> None:
        self.console, self.every_s, self.clock = console, every_s, clock
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:
            if self.tasks[task]["printed"] != self.tasks[task]["done"]:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = len(self.tasks)
        now = self.clock()
        self.tasks[task] = {"description": description, "total": total, "done": 0,
                            "fields": fields, "start": now, "last": now, "printed": 0}
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, advance: float = 0, **fields: Any) -> None:
        t = self.tasks[task]
        t["done"] += advance
        t["fields"].update(fields)
        finished = t["total"] is not None and t["done"] >= t["total"]
        if finished or self.clock() - t["last"] >= self.every_s:
            self._print(task)

    def _print(self, task: int) -> None:
        t = self.tasks[task]
        now = self.clock()
        elapsed = now - t["start"]
        done, total = t["done"], t["total"]
        parts = [f"{t['description']}: {done:g}/{total:g} done" if total is not None
                 else f"{t['description']}: {done:g} done"]
        if t["fields"]:
            parts.append(" ".join(f"{k}={v}" for k, v in t["fields"].items()))
        parts.append(f"{duration(elapsed)} elapsed")
        if total and 0 < done < total:
            parts.append(f"ETA {duration(elapsed * (total - done) / done)}")
        self.console.print(", ".join(parts), highlight=False, markup=False)
        t["last"], t["printed"] = now, done

"""The progress bar of every long command (`sair bench`, `sair load`): one layout, so they
read alike: description, bar, done/total, any command-specific columns, elapsed, ETA."""

from __future__ import annotations

from typing import Any


def progress_bar(console: Any, *columns: Any) -> Any:
    """A `rich.progress.Progress` on `console` with `columns` after the count; rich is
    imported here so `sair --help` does not pay for it."""
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

"""The two consoles every `sair` command prints to, and its one way to fail.

Results go to `out` (stdout); errors, progress and notes go to `err` (stderr), so a
command's output can be piped or parsed while its diagnostics still reach the terminal.
A rich `Console` looks up `sys.stdout` / `sys.stderr` when it prints, not when it is made,
so one pair shared by every command module is still captured by test runners that swap
the streams.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def error(msg: str) -> None:
    """Print `error: <msg>` on stderr. The message is text, not markup, so a path or an
    extra such as `sair-ray[k8s]` prints as written instead of being read as a style tag."""
    err.print(f"[red]error:[/red] {escape(msg)}")


def fail(msg: str, code: int = 2) -> NoReturn:
    """`error(msg)`, then exit with `code`: 2 (the default) for bad usage or input, as
    click does for its own usage errors."""
    error(msg)
    raise typer.Exit(code)

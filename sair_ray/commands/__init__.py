"""Every `sair` command group, one module per concern.

Each module here defines `register(app: typer.Typer) -> None`; `sair_ray.cli` calls
`register_all`, which imports every module of this package and calls it, so adding a
command group never edits cli.py. `console` is the exception: not a command, it holds the
consoles and the error helper every command module uses. Heavy imports (ray, llama_cpp,
kubernetes, the bench) belong inside the command functions, so `sair --help` stays fast
and works without the optional extras.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

# Modules that register no command.
HELPERS = ("console",)
# Registered first, in this order: `sair --help` lists commands in registration order
# (groups after commands), and `bench` belongs right after `version`, as docs/cli.md and
# users know it, not among the live commands.
FIRST = ("config", "memory", "bench")


def register_all(app: typer.Typer) -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in HELPERS)
    for mod in [*FIRST, *(n for n in names if n not in FIRST)]:
        importlib.import_module(f"{__name__}.{mod}").register(app)

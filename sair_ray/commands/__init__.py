"""`sair` subcommands that live outside cli.py, one module per concern.

Each module here defines `register(app: typer.Typer) -> None`; `sair_ray.cli` imports every
module of this package and calls it, so adding a command group never edits cli.py. Heavy
imports (ray, llama_cpp, kubernetes) belong inside the command functions, so `sair --help`
stays fast and works without the optional extras.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{mod}").register(app)

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
import inspect
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
    reflow_help(app)


def reflow_help(app: typer.Typer) -> None:
    """Set every command's help (of `app` and of its groups) to its docstring with each
    paragraph on one line: Typer's rich help keeps a paragraph's line breaks (all but the
    first paragraph's in a command's own help, and the first's in a group's command list),
    so the docstrings' source wrapping would break sentences mid-line on screen."""
    for cmd in app.registered_commands:
        doc = cmd.help or inspect.getdoc(cmd.callback) or ""
        cmd.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)

"""The `sair` command line: the app, `sair version`, and every command group of
`sair_ray.commands` (one module per group, each registering itself)."""

from __future__ import annotations

import sys

import typer

from sair_ray import __version__
from sair_ray.commands import register_all
from sair_ray.commands.console import err, out

app = typer.Typer(help="SAIR: an LLM in-context-RL autoscaler for multi-stage ML pipelines "
                       "on Ray Serve.", no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the sair-ray version."""
    out.print(__version__)


register_all(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

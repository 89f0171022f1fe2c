"""`sair config`: show, check and list SAIR's configuration; `load_config` for every
command that takes a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from sair_ray.commands.console import fail, out
from sair_ray.config import ConfigError, SAIRConfig, iter_options

config_app = typer.Typer(help="Inspect and check SAIR configuration files.",
                         no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                                                help="YAML config file (default: the "
                                                     "built-in defaults).")]


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


def load_config(path: Path | None) -> SAIRConfig:
    """The config at `path` (the defaults when None); a bad file exits 2 naming the key."""
    try:
        return SAIRConfig.from_yaml(path) if path else SAIRConfig()
    except ConfigError as e:
        fail(str(e))


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration (defaults merged with --config) as YAML."""
    out.print(yaml.safe_dump(load_config(config).to_dict(), sort_keys=False), end="")


@config_app.command("validate")
def config_validate(path: Path) -> None:
    """Check a config file; exit 2 with the offending key if it is invalid."""
    load_config(path)
    out.print(f"[green]ok[/green] {path}")


@config_app.command("options")
def config_options(markdown: Annotated[bool, typer.Option(
        help="Print a Markdown table (the docs' configuration reference).")] = False) -> None:
    """List every option with its default, allowed values and meaning."""
    rows = list(iter_options())
    if markdown:
        # plain print: rich would wrap the long rows at the terminal's width, and the
        # table is copied verbatim into docs/configuration.md
        print("| key | default | allowed | meaning |\n|---|---|---|---|")  # noqa: T201
        for key, default, allowed, help_ in rows:
            print(f"| `{key}` | `{default!r}` | {allowed} | {help_} |")  # noqa: T201
        return
    t = Table("key", "default", "allowed", "meaning")
    for key, default, allowed, help_ in rows:
        t.add_row(key, repr(default), allowed, help_)
    out.print(t)

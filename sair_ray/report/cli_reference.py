"""docs/cli.md, generated from the `sair` command line itself (so it cannot drift).

    python -m sair_ray.report.cli_reference > docs/cli.md

tests/report/test_docs_site.py checks that the committed file equals this output.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

HEADER = """# CLI reference

Generated from the code by `python -m sair_ray.report.cli_reference > docs/cli.md`; a test
fails when it is out of date. `sair COMMAND --help` prints the same.
"""


def _cell(s: object) -> str:
    # table cells: one line, and `<app>` in a help text must not become an HTML tag
    text = " ".join(str(s).split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _is_option(p: Any) -> bool:
    # typer >= 0.2x vendors its own click: duck-type instead of isinstance(click.Option)
    return getattr(p, "param_type_name", "") == "option"


def _default(p: Any) -> str:
    if p.required:
        return "required"
    d = p.default
    if d is None or d == () or d == []:
        return ""
    if _is_option(p) and p.is_flag:
        return "on" if d else "off"
    return f"`{d}`"


def _command(path: list[str], cmd: Any, out: list[str]) -> None:
    name = " ".join(path)
    out.append(f"## `{name}`\n")
    doc = (cmd.help or "").strip()
    if doc:
        out.append(" ".join(doc.split()) + "\n")
    ctx = cmd.context_class(cmd, info_name=name)
    out.append(f"```\n{name} {' '.join(cmd.collect_usage_pieces(ctx))}\n```\n")
    params = [p for p in cmd.params if not getattr(p, "hidden", False)
              and p.name not in ("help",)]
    if params:
        out.append("| argument / option | type | default | meaning |\n|---|---|---|---|")
        for p in params:
            names = (", ".join(f"`{o}`" for o in p.opts) if _is_option(p)
                     else f"`{(p.name or '').upper()}`")
            if _is_option(p) and p.secondary_opts:
                names += ", " + ", ".join(f"`{o}`" for o in p.secondary_opts)
            kind = _cell(p.display_type(ctx).strip("<>"))
            out.append(f"| {names} | `{kind}` | {_cell(_default(p))} | "
                       f"{_cell(getattr(p, 'help', '') or '')} |")
        out.append("")
    if hasattr(cmd, "commands"):  # a command group
        for sub in sorted(cmd.commands):
            _command([*path, sub], cmd.commands[sub], out)


def generate(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    if not isinstance(root, TyperGroup):
        raise TypeError(f"expected an app with subcommands, got a {type(root).__name__}")
    out = [HEADER, " ".join((root.help or "").split()) + "\n"]
    names = sorted(root.commands)
    out.append("Commands: " + ", ".join(f"`sair {n}`" for n in names) + ".\n")
    for n in names:
        _command(["sair", n], root.commands[n], out)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    from sair_ray.cli import app

    sys.stdout.write(generate(app))


if __name__ == "__main__":
    main()

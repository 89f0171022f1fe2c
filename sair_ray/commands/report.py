"""`sair report`: an HTML page with figures from a decision log (live app or run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from sair_ray.commands.console import fail, out


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    target: Annotated[str, typer.Argument(
        help="Serve app name, a decisions.jsonl file or a directory holding one.")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output directory (default: runs/report/<app>).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        help="Base data dir for an app name (default: $SAIR_DATA_DIR or "
             "~/.local/share/sair-ray).")] = None,
) -> None:
    """Write report.html (figures embedded, so the one file can be mailed) plus the
    figures as PNGs: p99 vs SLA, arrival rate, replicas and GPU rate per stage, cost rate,
    reward and its terms, probes vs policy decisions, the Pareto frontier of outcomes."""
    from sair_ray.report.records import LogError, load, resolve

    try:
        recs = load(resolve(target, data_dir))
    except LogError as e:
        fail(str(e))
    if importlib.util.find_spec("matplotlib") is None:  # the `bench` extra
        fail("the report needs matplotlib: pip install 'sair-ray[bench]'")
    from sair_ray.report.html import write_report

    dest = out_dir or Path("runs") / "report" / (recs.app or recs.path.parent.name)
    try:
        page = write_report(recs, dest)
    except ValueError as e:
        fail(str(e))
    out.print(f"{len(recs.decisions)} rounds -> {page} (+ PNGs in {page.parent})")

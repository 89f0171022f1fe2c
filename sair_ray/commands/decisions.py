"""`sair decisions`: every round of a decision log, explained.

Reads the log the controller writes (`decisions.jsonl`: a live app's data dir, an operator
home, or any run given `log_path`), so it works after the controller is gone and needs no
Ray connection.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sair_ray.commands.console import err, fail, out


def register(app: typer.Typer) -> None:
    app.command("decisions")(decisions)


def decisions(
    target: Annotated[str, typer.Argument(
        help="Serve app name (its log in $SAIR_DATA_DIR or ~/.local/share/sair-ray/<app>), "
             "a decisions.jsonl file or a directory holding one.")],
    last: Annotated[int, typer.Option(help="Show the last N rounds (0: all).", min=0)] = 10,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the merged records (decision + its reward) as JSON lines.")]
        = False,
    data_dir: Annotated[str | None, typer.Option(
        help="Base data dir for an app name (default: $SAIR_DATA_DIR or "
             "~/.local/share/sair-ray).")] = None,
) -> None:
    """Explain each decision round: context, bottleneck, retrieved episodes, the policy's
    reply and rationale, the validated action with every clamp, the reward breakdown."""
    from sair_ray.report.explain import explain
    from sair_ray.report.records import LogError, load, resolve

    try:
        recs = load(resolve(target, data_dir))
    except LogError as e:
        fail(str(e))
    chosen = recs.last(last)
    if as_json:
        for r in chosen:
            # print, not rich: JSON lines must stay one record per line for jq and friends
            print(json.dumps(r, separators=(",", ":")))  # noqa: T201
        return
    if not chosen:
        err.print(f"{recs.path}: no decisions logged yet")
        return
    out.print(f"[bold]{recs.app}[/bold]: {len(recs.decisions)} rounds in {recs.path}"
              + (f", showing the last {len(chosen)}" if len(chosen) < len(recs.decisions)
                 else ""))
    for r in chosen:
        out.print(explain(r))

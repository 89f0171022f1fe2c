"""`sair demo`: the CPU-only live demo behind `make demo` (sair_ray/live/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sair_ray.commands.console import err, out


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    duration: Annotated[float, typer.Option(help="Seconds of load.", min=10)] = 180.0,
    policy: Annotated[str, typer.Option(
        help="sair (LLM), sair-retrieval, or a baseline name.")] = "sair",
    base: Annotated[float, typer.Option(help="Base request rate, req/s.", min=0.1)] = 2.0,
    spike: Annotated[float, typer.Option(help="Burst request rate, req/s.", min=0.1)] = 6.0,
    num_cpus: Annotated[int, typer.Option(help="Logical CPUs of the local Ray.", min=4)] = 8,
    port: Annotated[int, typer.Option(help="Serve HTTP port.")] = 8000,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path(
        "runs/demo"),
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 if any request got no answer or the report page is missing "
        "(CI's smoke test).")] = False,
) -> None:
    """Start local Ray, deploy image_classification with SAIR attached, drive a burst
    workload with a live table, write the `sair report` HTML page of the run and a summary
    of the load and decisions, shut everything down."""
    import logging

    from sair_ray.live.demo import DemoOptions, check_summary, run_demo
    from sair_ray.registry import PolicyError, get_live

    try:
        get_live(policy)
    except PolicyError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING)
    opts = DemoOptions(duration_s=duration, policy=policy, base_rps=base, spike_rps=spike,
                       num_cpus=num_cpus, http_port=port, out_dir=out_dir)
    try:
        report = run_demo(opts, out)
    except KeyboardInterrupt:
        err.print("interrupted during set-up; everything was shut down")
        raise typer.Exit(130) from None
    html = report.with_name("report.html")
    out.print(f"report -> {html} (figures), {report} (load and decisions)" if html.exists()
              else f"report -> {report}")
    if check:
        problems = check_summary(report.parent)
        for p in problems:
            err.print(f"[red]check failed:[/red] {p}")
        if problems:
            raise typer.Exit(1)
        out.print("check passed: every request answered, report written")

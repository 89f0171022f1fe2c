"""`sair demo`: the CPU-only live demo behind `make demo` (sair_ray/live/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sair_ray.commands.console import err, out


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    duration: Annotated[float | None, typer.Option(
        help="Seconds of load (default 300; 180 with --real-models).", min=10,
        show_default=False)] = None,
    policy: Annotated[str, typer.Option(
        help="sair (LLM), sair-retrieval, or a baseline name.")] = "sair",
    real_models: Annotated[bool, typer.Option(
        "--real-models", help="Run the real-model app (PIL, MobileNetV2 on the CPU) "
        "instead of emulated compute. On 2 cores its replicas share the cores with "
        "everything else, so scaling out adds little capacity there.")] = False,
    base: Annotated[float | None, typer.Option(
        help="Base request rate, req/s sent (default 1; 2 with --real-models).", min=0.1,
        show_default=False)] = None,
    spike: Annotated[float | None, typer.Option(
        help="Burst request rate, req/s sent (default 3; 6 with --real-models).", min=0.1,
        show_default=False)] = None,
    time_scale: Annotated[float, typer.Option(
        help="Emulated compute: the profile's service times and SLA are multiplied by "
        "this (cold starts are not); the default rates suit 10.", min=1)] = 10.0,
    num_cpus: Annotated[int, typer.Option(
        help="Logical CPUs of the local Ray, --real-models only (the emulated app's Ray "
        "has the profile's cluster).", min=4)] = 8,
    port: Annotated[int, typer.Option(help="Serve HTTP port.")] = 8000,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path(
        "runs/demo"),
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 if any request got no answer or the report page is missing "
        "(CI's smoke test), or if p99 went over the SLA in a load phase after the first "
        "spike (judged only in runs that hold a whole second spike: 165 s and longer at "
        "the defaults).")] = False,
) -> None:
    """Start local Ray, deploy image_classification with SAIR attached, drive a burst
    workload with a live table, write the `sair report` HTML page of the run and a summary
    of the load, the SLA per load phase and the decisions, shut everything down.

    By default the app's replicas emulate their compute (they wait out the profile's
    service times, docs/emulation.md), so that scaling out adds capacity on a small
    machine."""
    import logging

    from sair_ray.live.demo import DemoOptions, check_summary, run_demo, sla_note
    from sair_ray.registry import PolicyError, get_live

    try:
        get_live(policy)
    except PolicyError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING)
    opts = DemoOptions.for_mode(real_models, duration_s=duration, policy=policy,
                                base_rps=base, spike_rps=spike, time_scale=time_scale,
                                num_cpus=num_cpus, http_port=port, out_dir=out_dir)
    try:
        report = run_demo(opts, out)
    except KeyboardInterrupt:
        err.print("interrupted during set-up; everything was shut down")
        raise typer.Exit(130) from None
    html = report.with_name("report.html")
    out.print(f"report -> {html} (figures), {report} (load and decisions)" if html.exists()
              else f"report -> {report}")
    note = sla_note(report.parent)
    if note:
        out.print(note)
    if check:
        problems = check_summary(report.parent)
        for p in problems:
            err.print(f"[red]check failed:[/red] {p}")
        if problems:
            raise typer.Exit(1)
        out.print("check passed: every request answered, report written"
                  + ("" if "not judged" in note else ", SLA held after the first spike"))

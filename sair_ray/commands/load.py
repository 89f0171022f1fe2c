"""`sair load`: drive a pipeline app over HTTP with a workload pattern and record every
request (sair_ray.loadgen)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sair_ray.commands.console import err, fail, out
from serve_apps import APPS as APP_NAMES  # light: no Ray or torch import


def register(app: typer.Typer) -> None:
    app.command("load")(load)


def load(
    target: Annotated[str, typer.Argument(
        help="App name (image_classification, nlp_analysis, text_generation, "
             "video_analysis) or a full http(s) URL.")],
    pattern: Annotated[str, typer.Option(
        help="poisson, ramp, burst or trace.")] = "poisson",
    rate: Annotated[float | None, typer.Option(help="poisson: requests/s.")] = 5.0,
    start_rate: Annotated[float | None, typer.Option(
        "--from", help="ramp: starting requests/s.")] = None,
    end_rate: Annotated[float | None, typer.Option(
        "--to", help="ramp: final requests/s (reached at --duration).")] = None,
    base: Annotated[float | None, typer.Option(help="burst: base requests/s.")] = None,
    spike: Annotated[float | None, typer.Option(help="burst: spike requests/s.")] = None,
    period: Annotated[float | None, typer.Option(
        help="burst: seconds from one spike to the next.")] = None,
    spike_s: Annotated[float | None, typer.Option(
        "--spike-s", help="burst: spike length in seconds.")] = None,
    trace: Annotated[str, typer.Option(
        help="trace: CSV path, or 'azure' for the Azure LLM trace 2023.")] = "azure",
    time_scale: Annotated[float, typer.Option(
        help="trace: play time x this (0.5 = twice as fast).")] = 1.0,
    rate_scale: Annotated[float, typer.Option(help="trace: thin/replicate requests.")] = 1.0,
    workload: Annotated[Path | None, typer.Option(
        help="YAML workload file ({kind: burst, ...}); overrides --pattern.")] = None,
    duration: Annotated[float, typer.Option(help="Seconds of planned arrivals.")] = 60.0,
    concurrency: Annotated[int, typer.Option(help="Most requests in flight.", min=1)] = 64,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 30.0,
    time_limit: Annotated[float | None, typer.Option(
        help="Hard cap on the run, seconds (default: duration + timeout).")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Send at most this many.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the arrival times.")] = 0,
    host: Annotated[str, typer.Option(
        help="Serve HTTP address used with an app name.")] = "http://127.0.0.1:8000",
    body: Annotated[Path | None, typer.Option(
        help="JSON file sent as every request's body (default: the app's examples).")] = None,
    out_path: Annotated[Path, typer.Option(
        "--out", help="Per-request results (.parquet or .csv).")] = Path(
        "runs/load/results.parquet"),
) -> None:
    """Send Poisson / ramp / burst / trace traffic to a Serve app and record every request.

    Every planned request ends with a status (ok, http_error, timeout, conn_error, not_sent,
    cancelled); Ctrl-C stops sending and keeps what was recorded."""
    import asyncio
    import signal

    from rich.progress import TextColumn

    from sair_ray.loadgen import (
        LoadRunner,
        RequestResult,
        app_bodies,
        build_plan,
        file_body,
        summarize,
        workload_from_options,
        write_results,
    )
    from sair_ray.progress import progress_bar
    from sair_ray.workloads import WorkloadError, load_workload

    is_url = target.startswith(("http://", "https://"))
    if not is_url and target not in APP_NAMES:
        fail(f"unknown app {target!r}: give one of {', '.join(APP_NAMES)} or a URL")
    if is_url and body is None:
        fail("with a URL target, give --body FILE.json (the app is unknown)")
    if out_path.suffix not in (".parquet", ".csv"):
        fail(f"--out {out_path} must end in .parquet or .csv")
    url = target if is_url else f"{host.rstrip('/')}/{target}"
    try:
        wl = load_workload(workload) if workload else workload_from_options(
            pattern, rate=rate, start_rate=start_rate, end_rate=end_rate, base=base,
            spike=spike, period_s=period, spike_s=spike_s, trace=trace,
            time_scale=time_scale, rate_scale=rate_scale, duration_s=duration)
        plan = build_plan(wl, duration, seed=seed, max_requests=max_requests)
        make_body = file_body(body) if body else app_bodies(target, plan)
        runner = LoadRunner(url, plan, make_body, concurrency=concurrency, timeout_s=timeout,
                            time_limit_s=time_limit)
    except (WorkloadError, ValueError) as e:
        fail(str(e))
    if plan.credit:
        err.print(f"trace: {plan.credit}")
    err.print(f"{len(plan)} requests planned over {duration:g} s ({plan.workload}) -> {url}")

    interrupted = False
    with progress_bar(err, TextColumn("ok {task.fields[ok]} err {task.fields[bad]}")) \
            as progress:
        task = progress.add_task("load", total=len(plan), ok=0, bad=0)
        tally = {"ok": 0, "bad": 0}

        def done(r: RequestResult) -> None:
            tally["ok" if r.status == "ok" else "bad"] += 1
            progress.update(task, advance=1, **tally)

        async def main() -> None:
            nonlocal interrupted
            loop = asyncio.get_running_loop()

            def on_sigint() -> None:
                nonlocal interrupted
                interrupted = True
                runner.stop()

            loop.add_signal_handler(signal.SIGINT, on_sigint)
            try:
                await runner.run(on_result=done)
            finally:
                loop.remove_signal_handler(signal.SIGINT)

        asyncio.run(main())

    results = runner.results
    summary = summarize(results, runner.finished - runner.started, runner.max_in_flight)
    path = write_results(results, out_path)
    c = summary.counts
    t = Table("planned", "sent", "ok", "errors", "timeouts", "not sent", "cancelled",
              title=f"sair load {target}")
    t.add_row(str(summary.planned), str(summary.sent), str(summary.ok), str(summary.errors),
              str(summary.timeouts), str(c["not_sent"]), str(c["cancelled"]))
    out.print(t)
    out.print(f"latency of ok requests: p50 {_ms(summary.p50_ms)} ms, p99 "
              f"{_ms(summary.p99_ms)} ms; {summary.achieved_rps:.1f} req/s sent; "
              f"p99 send delay {_ms(summary.send_delay_p99_ms)} ms")
    out.print(f"results -> {path}")
    if interrupted:
        err.print("interrupted: partial results kept")
        raise typer.Exit(130)


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.1f}"

"""`sair attach`, `sair detach`, `sair status`, `sair top`: SAIR's controller on a running
Serve app (`sair top` also follows a decision log).

The controller runs as the detached Ray actor `sair-controller:<app>` (namespace `sair`),
so `sair attach` returns as soon as it is up, and keeps running after the command exits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from sair_ray.commands.console import fail, out

AppArg = Annotated[str, typer.Argument(help="Serve application name.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster address (default: RAY_ADDRESS, else the local cluster).")]


def register(app: typer.Typer) -> None:
    app.command("attach")(attach)
    app.command("detach")(detach)
    app.command("status")(status)
    app.command("top")(top)


def attach(
    app_name: AppArg,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="SAIR config YAML (default: the built-in defaults).")] = None,
    policy: Annotated[str, typer.Option(
        help="sair (LLM), sair-retrieval, or a baseline: static, hpa, vpa, threshold, "
             "ray_serve.")] = "sair",
    sla_ms: Annotated[float | None, typer.Option(
        "--sla-ms", help="End-to-end p99 latency target in ms (pipeline.sla_ms); required "
                         "for an app without a profile.", min=0)] = None,
    stages: Annotated[str | None, typer.Option(
        help="Stage order as comma-separated deployment names (pipeline.stages; default: "
             "Serve's deployment graph, ingress first).")] = None,
    metrics: Annotated[str | None, typer.Option(
        help="Metrics source (pipeline.metrics): serve (Ray Serve's own metrics, no code in "
             "the app), meter (sair_ray.observe.StageMeter in the app), auto.")] = None,
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus server URL to read Serve's metrics from (pipeline.prometheus_url; "
             "default: each Ray node's metrics agent).")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Pipeline profile YAML whose stages are the app's deployments (default: the "
             "shipped profile named like the app, else the stages are read from Serve).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where memory, state and decision log live (default: "
                           "$SAIR_DATA_DIR or ~/.local/share/sair-ray).")] = None,
    dashboard: Annotated[str | None, typer.Option(
        help="Ray dashboard address (default: the cluster's).")] = None,
    policy_param: Annotated[list[str] | None, typer.Option(
        "--policy-param", metavar="NAME=VALUE",
        help="A baseline's own setting, a keyword of its constructor (sair_ray.baselines), "
             "e.g. --policy-param cpu_p99_ms=50; repeatable; values read as YAML scalars. "
             "SAIR's policies take theirs from --config.")] = None,
    address: AddressOpt = None,
) -> None:
    """Attach SAIR to a running Serve app (deployed with `external_scaler_enabled: true`, or
    with `autoscaling_policy: sair_ray.serve:SAIRPolicy`). Any Serve app: without a
    profile its stages are its deployments and `--sla-ms` gives the latency target."""
    from sair_ray.commands.config import load_config
    from sair_ray.config import ConfigError
    from sair_ray.registry import PolicyError, check_params, get_live

    params = _policy_params(policy_param or [])
    try:
        check_params(get_live(policy), params)
    except PolicyError as e:
        fail(str(e))
    cfg = load_config(config)
    given = {"pipeline.sla_ms": sla_ms, "pipeline.stages": stages,
             "pipeline.metrics": metrics, "pipeline.prometheus_url": prometheus}
    try:
        cfg = cfg.replace(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as e:
        fail(str(e))
    _connect(address)
    from sair_ray.backends.ray_serve import ServeAdminError, ServeSetupError
    from sair_ray.live import AttachError, PolicyError
    from sair_ray.live import attach as do_attach

    try:
        handle = do_attach(app_name, cfg, policy, profile=profile, data_dir=data_dir,
                           dashboard_url=dashboard, policy_params=params)
    except (ServeSetupError, ServeAdminError, PolicyError, AttachError) as e:
        fail(str(e))
    st = handle.status()
    out.print(f"[green]attached[/green] SAIR to {app_name!r}: policy {st['policy']}, a round "
              f"every {st['decision_interval_s']:g} s, data in {st['data_dir']}")
    out.print(f"follow it with `sair status {app_name}`; stop it with `sair detach {app_name}`")


def _policy_params(items: list[str]) -> dict[str, Any]:
    """`--policy-param NAME=VALUE` options as keyword arguments; a value is read as a YAML
    scalar (50 -> int, 0.5 and 1e2 -> float, true -> bool), so numbers reach the
    constructor as numbers. Exits 2 naming a malformed item."""
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            fail(f"--policy-param {item!r}: expected NAME=VALUE, e.g. cpu_p99_ms=50")
        if name in params:
            fail(f"--policy-param {name!r} given twice")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e2 as a string
            except ValueError:
                pass
        if isinstance(value, (dict, list)) or value is None:
            fail(f"--policy-param {item!r}: the value must be a number, a word or true/false")
        params[name] = value
    return params


def detach(app_name: AppArg, address: AddressOpt = None) -> None:
    """Stop SAIR's controller of an app (memory, state and log stay for the next attach)."""
    _connect(address)
    from sair_ray.live import detach as do_detach

    final = do_detach(app_name)
    if final is None:
        fail(f"no SAIR controller is attached to {app_name!r}")
    out.print(f"detached from {app_name!r} after {final['rounds']} rounds")


def status(
    app_name: AppArg,
    last: Annotated[int, typer.Option(help="Recent rounds to list (0: all kept).",
                                      min=0)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    address: AddressOpt = None,
) -> None:
    """Show an attached controller's state: p99 vs SLA, per stage the replicas, CPU and
    memory, GPU rate, queue, utilisation and last action, epsilon, memory size, the last
    decision and reward, errors, and the recent rounds."""
    from sair_ray.report.status_view import from_status, render

    _connect(address)
    handle = _live_handle(app_name)
    st, decisions = handle.status(), handle.decisions(last)
    if as_json:
        out.print_json(json.dumps({"status": st, "decisions": decisions}, default=str))
        return
    out.print(render(from_status(st, decisions)))


def top(
    target: Annotated[str, typer.Argument(
        help="Serve app name (its attached controller), or a decision log or a directory "
             "holding one (a live app's data dir, a `sair bench --log-dir` run's "
             "<app>/<pattern>/<method>/seed<N>), shown at its latest round.")],
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.",
                                            min=0.2)] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the view once and exit.")]
        = False,
    last: Annotated[int, typer.Option(help="Recent rounds to list.", min=1)] = 5,
    address: AddressOpt = None,
) -> None:
    """`sair status`, refreshed in place every --interval seconds until Ctrl-C; also
    follows a decision log as it grows, so it works on a finished or running bench run."""
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from sair_ray.report.status_view import render

    fetch = _log_view(target, last) if _names_a_log(target) else _live_view(target, last,
                                                                             address)
    shown = render(fetch())
    if once:
        out.print(shown)
        return

    def frame() -> Any:
        nonlocal shown
        try:
            shown = render(fetch())
            return shown
        except Exception as e:  # a monitor outlives a slow actor or a log being replaced
            return Group(shown, Text(f"refresh failed at {time.strftime('%H:%M:%S')}: {e}",
                                     style="red"))

    try:
        with Live(shown, console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how top is meant to end


def _names_a_log(target: str) -> bool:
    p = Path(target).expanduser()
    return p.exists() or "/" in target or target.endswith(".jsonl")


def _log_view(target: str, last: int) -> Any:
    from sair_ray.report.records import LogError, LogReader, resolve
    from sair_ray.report.status_view import from_log

    try:
        # past rounds are not shown, so the reader keeps only a few (the policy's name
        # comes from the latest non-probe round among them)
        reader = LogReader(resolve(target), keep=max(last, 50))
        reader.read()
    except LogError as e:
        fail(str(e))
    return lambda: from_log(reader.read(), last)


def _live_view(app_name: str, last: int, address: str | None) -> Any:
    from sair_ray.report.status_view import from_status

    _connect(address)
    handle = _live_handle(app_name)
    return lambda: from_status(handle.status(), handle.decisions(last))


def _live_handle(app_name: str) -> Any:
    from sair_ray.live import get_handle

    handle = get_handle(app_name)
    if handle is None:
        fail(f"no SAIR controller is attached to {app_name!r} (sair attach {app_name}; "
              f"a detached app's decision log: sair top <data dir>/{app_name})")
    return handle


def _connect(address: str | None) -> None:
    import socket

    import ray

    if address and address not in ("auto", "local") and "://" not in address:
        # Ray retries an unreachable address for minutes; say so at once instead.
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
        except (OSError, ValueError) as e:
            fail(f"no Ray cluster at {address}: {e}")
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:
        fail(f"cannot connect to a Ray cluster ({address or 'auto'}): {e}")

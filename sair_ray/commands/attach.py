"""`sair attach`, `sair detach`, `sair status`: SAIR's controller on a running Serve app.

The controller runs as the detached Ray actor `sair-controller:<app>` (namespace `sair`),
so `sair attach` returns as soon as it is up, and keeps running after the command exits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

AppArg = Annotated[str, typer.Argument(help="Serve application name.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster address (default: RAY_ADDRESS, else the local cluster).")]


def register(app: typer.Typer) -> None:
    app.command("attach")(attach)
    app.command("detach")(detach)
    app.command("status")(status)


def attach(
    app_name: AppArg,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="SAIR config YAML (default: SPEC defaults).")] = None,
    policy: Annotated[str, typer.Option(
        help="sair (LLM), sair-retrieval, or a baseline: static, hpa, vpa, threshold, "
             "ray_serve.")] = "sair",
    profile: Annotated[str | None, typer.Option(
        help="Pipeline profile YAML whose stages are the app's deployments (default: the "
             "shipped profile named like the app).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where memory, state and decision log live (default: "
                           "$SAIR_DATA_DIR or ~/.local/share/sair-ray).")] = None,
    dashboard: Annotated[str | None, typer.Option(
        help="Ray dashboard address (default: the cluster's).")] = None,
    address: AddressOpt = None,
) -> None:
    """Attach SAIR to a running Serve app (deployed with `external_scaler_enabled: true`)."""
    from sair_ray.baselines import BASELINES
    from sair_ray.config import ConfigError, SAIRConfig
    from sair_ray.policy import SAIR_POLICIES

    if policy not in SAIR_POLICIES + tuple(BASELINES):
        _fail(f"unknown policy {policy!r}; choose one of "
              f"{', '.join(SAIR_POLICIES + tuple(BASELINES))}")
    try:
        cfg = SAIRConfig.from_yaml(config) if config else SAIRConfig()
    except ConfigError as e:
        _fail(str(e))
    _connect(address)
    from sair_ray.backends.ray_serve import ServeAdminError, ServeSetupError
    from sair_ray.live import AttachError, PolicyError
    from sair_ray.live import attach as do_attach

    try:
        handle = do_attach(app_name, cfg, policy, profile=profile, data_dir=data_dir,
                           dashboard_url=dashboard)
    except (ServeSetupError, ServeAdminError, PolicyError, AttachError) as e:
        _fail(str(e))
    st = handle.status()
    out.print(f"[green]attached[/green] SAIR to {app_name!r}: policy {st['policy']}, a round "
              f"every {st['decision_interval_s']:g} s, data in {st['data_dir']}")
    out.print(f"follow it with `sair status {app_name}`; stop it with `sair detach {app_name}`")


def detach(app_name: AppArg, address: AddressOpt = None) -> None:
    """Stop SAIR's controller of an app (memory, state and log stay for the next attach)."""
    _connect(address)
    from sair_ray.live import detach as do_detach

    final = do_detach(app_name)
    if final is None:
        _fail(f"no SAIR controller is attached to {app_name!r}")
    out.print(f"detached from {app_name!r} after {final['rounds']} rounds")


def status(
    app_name: AppArg,
    last: Annotated[int, typer.Option(help="Decisions to show.", min=0)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    address: AddressOpt = None,
) -> None:
    """Show an attached controller's state and its last decisions."""
    _connect(address)
    from sair_ray.live import get_handle

    handle = get_handle(app_name)
    if handle is None:
        _fail(f"no SAIR controller is attached to {app_name!r} (sair attach {app_name})")
    st, decisions = handle.status(), handle.decisions(last)
    if as_json:
        out.print_json(json.dumps({"status": st, "decisions": decisions}, default=str))
        return
    out.print(f"[bold]{app_name}[/bold]: policy {st['policy']}, rounds {st['rounds_ok']} ok / "
              f"{st['rounds_failed']} failed, memory {st['memory_size']}, controller CPU "
              f"{100 * st['cpu_frac']:.2f} % of a core")
    if st["last_error"]:
        out.print(f"[yellow]last error:[/yellow] {st['last_error']}")
    for ch in st["external_changes"]:
        out.print(f"external change: {ch['stage']}.{ch['field']} {ch['expected']} -> "
                  f"{ch['observed']} (adopted)")
    for e in st["actuation_errors"]:
        out.print(f"[red]actuation error:[/red] {e['stage']}.{e['what']}: {e['error']}")
    out.print(decision_table(decisions))


def decision_table(decisions: list[dict[str, Any]]) -> Table:
    t = Table("round", "p99 / SLA ms", "req/s", "replicas", "action", "rationale",
              title="recent decisions")
    for d in decisions:
        reps = " ".join(f"{n}:{s['replicas']}" for n, s in d["stages"].items())
        act = ", ".join(f"{n} {_delta(a)}" for n, a in d["action"].items()) or "-"
        t.add_row(str(d["round"]), f"{_num(d['p99_ms'])} / {_num(d['sla_ms'])}",
                  _num(d["arrival_rate"], 1), reps, act, (d["rationale"] or d["error"])[:80])
    return t


def _delta(a: dict[str, float]) -> str:
    names = {"replicas": "n", "cpu_m": "cpu", "mem_mb": "mem", "rate": "r"}
    return " ".join(f"{names.get(k, k)}{v:+g}" for k, v in a.items() if v)


def _num(v: Any, digits: int = 0) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if f != f else f"{f:.{digits}f}"


def _connect(address: str | None) -> None:
    import socket

    import ray

    if address and address not in ("auto", "local") and "://" not in address:
        # Ray retries an unreachable address for minutes; say so at once instead.
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
        except (OSError, ValueError) as e:
            _fail(f"no Ray cluster at {address}: {e}")
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR")
    except ConnectionError as e:
        _fail(f"cannot connect to a Ray cluster ({address or 'auto'}): {e}")


def _fail(msg: str) -> NoReturn:
    err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)

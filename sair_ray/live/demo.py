"""`sair demo` / `make demo`: SAIR live on a laptop, CPU only, no network.

1. start a private local Ray (dashboard on), 2. deploy the image_classification pipeline
from its serve config (declarative, `external_scaler_enabled: true`), 3. attach SAIR as
the detached controller actor, 4. drive a burst workload over HTTP (sair_ray.loadgen)
while a live table shows per-stage replicas, queue and p99 against the SLA and the last
decision with its rationale, 5. write `sair report`'s HTML page (figures from the
controller's decision log, `sair_ray.report.html`) and a Markdown summary of the load and
the scaling decisions, and shut everything down, also on Ctrl-C.

The monitor samples the app's metrics actor every `sample_s` seconds for the live table
and `timeline.csv`; the figures come from the decision log, as for any other run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serve_apps import config_path

log = logging.getLogger(__name__)

APP = "image_classification"
SERVE_CONFIG = config_path(APP)
DEMO_CONFIG = {  # rounds fit a 3-minute demo; the defaults are 30 s / 60 s / 120 s
    "loop": {"decision_interval_s": 15, "settle_s": 5},
    "validator": {"cooldown_up_s": 15, "cooldown_down_s": 60, "replicas_max": 4},
    # the app and the embedded model share 2 cores here: replies can take 15-25 s
    "policy": {"llm_timeout_s": 30},
    # a demo is too short for a probe that removes capacity mid-burst to be worth it
    "exploration": {"safe": True},
}


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 180.0
    policy: str = "sair"
    base_rps: float = 2.0
    spike_rps: float = 6.0
    period_s: float = 90.0
    spike_s: float = 45.0
    warmup_s: float = 30.0                    # base rate only, so the first round (and the
                                              # LLM's start) precede the first burst
    image_px: tuple[int, int] = (3200, 2400)  # bigger photos: a heavier preprocess stage
    num_cpus: int = 8                         # logical CPUs Ray may hand out
    http_port: int = 8000
    out_dir: Path = Path("runs/demo")
    data_dir: Path | None = None
    sample_s: float = 2.0
    seed: int = 0


@dataclass
class Sample:
    t: float                                   # seconds since the load started
    arrival_rps: float
    p99_ms: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)


def _finite(x: Any) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f


class Monitor:
    """Samples metrics and replica targets; keeps the timeline and the last decision."""

    def __init__(self, app: str, admin: Any, handle: Any, t0: float, window_s: float = 10.0
                 ) -> None:
        from sair_ray.observe import MetricsClient

        self.app, self.admin, self.handle, self.t0 = app, admin, handle, t0
        self.metrics = MetricsClient(app)
        self.window_s = window_s
        self.samples: list[Sample] = []
        self.last_decision: dict[str, Any] | None = None
        self.status: dict[str, Any] = {}

    def sample(self) -> Sample:
        now = time.time()
        w = self.metrics.window(now - self.window_s, now)
        deps = self.admin.details()["applications"][self.app]["deployments"]
        stages = {}
        for name, sw in w.stages.items():
            stages[name] = {"replicas": deps.get(name, {}).get("target_num_replicas", 0),
                            "queue": sw.queue, "p99_ms": _finite(sw.p99_ms),
                            "util": _finite(sw.util)}
        s = Sample(now - self.t0, w.arrival_rate, _finite(w.p99_ms), stages)
        self.samples.append(s)
        decisions = self.handle.decisions(1)
        if decisions:
            self.last_decision = decisions[-1]
        self.status = self.handle.status()
        return s


def render(mon: Monitor, sla_ms: float, progress: str) -> Any:
    """The live view: one row per stage, then the last decision and its rationale."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    s = mon.samples[-1] if mon.samples else None
    t = Table(title=f"{mon.app} -- {progress}", expand=True)
    for col in ("stage", "replicas", "queue", "p99 ms (10 s)", "CPU util"):
        t.add_column(col, justify="right" if col != "stage" else "left")
    if s is not None:
        for name, st in s.stages.items():
            t.add_row(name, str(st["replicas"]), str(st["queue"]), _fmt(st["p99_ms"]),
                      _fmt(st["util"], 2))
        over = s.p99_ms > sla_ms
        colour = "red" if over or math.isnan(s.p99_ms) else "green"
        t.add_row(Text("end to end", style="bold"), "", "",
                  Text(f"{_fmt(s.p99_ms)} / SLA {sla_ms:g}", style=colour),
                  f"{s.arrival_rps:.1f} req/s")
    d = mon.last_decision
    if d is None:
        body = Text("no decision yet (the first round comes after one decision interval)")
    else:
        act = ", ".join(f"{n}: " + " ".join(f"{k} {v:+g}" for k, v in a.items() if v)
                        for n, a in d["action"].items()) or "no change"
        body = Text(f"round {d['round']} ({d['source']}): {act}\n"
                    f"{(d['rationale'] or d['error'] or '')[:400]}")
    st = mon.status
    foot = (f"policy {st.get('policy', '?')}, rounds {st.get('rounds_ok', 0)} ok / "
            f"{st.get('rounds_failed', 0)} failed, memory {st.get('memory_size', 0)}")
    return Group(t, Panel(body, title="last decision", subtitle=foot))


def _fmt(x: float, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def image_bodies(width: int, height: int, variants: int = 4) -> Callable[[int], bytes]:
    from serve_apps.payloads import image_request

    pool = [json.dumps(image_request(seed, width, height)).encode() for seed in range(variants)]
    return lambda i: pool[i % len(pool)]


def _plan(opts: DemoOptions) -> Any:
    """`warmup_s` of Poisson at the base rate, then the burst pattern."""
    import numpy as np

    from sair_ray.loadgen import build_plan, workload_from_options
    from sair_ray.loadgen.plan import LoadPlan

    burst_s = max(opts.duration_s - opts.warmup_s, 1.0)
    burst = build_plan(workload_from_options(
        "burst", base=opts.base_rps, spike=opts.spike_rps, period_s=opts.period_s,
        spike_s=opts.spike_s), burst_s, seed=opts.seed)
    if opts.warmup_s <= 0:
        return burst
    warm = build_plan(workload_from_options("poisson", rate=opts.base_rps), opts.warmup_s,
                      seed=opts.seed + 1)
    return LoadPlan(np.concatenate([warm.times, burst.times + opts.warmup_s]),
                    workload={"warmup": warm.workload, "burst": burst.workload},
                    duration_s=opts.warmup_s + burst_s)


def run_demo(opts: DemoOptions, console: Any) -> Path:
    """Everything, start to report; returns the Markdown summary's path (report.html
    beside it). Cleans up on any exit."""
    import ray
    from rich.live import Live

    from sair_ray.backends.ray_serve import ServeAdmin, discover_dashboard_url
    from sair_ray.files import LOG_FILE, app_data_dir
    from sair_ray.live import attach
    from sair_ray.loadgen import LoadRunner, summarize
    from sair_ray.profiles import load_profile

    out = opts.out_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data_dir = opts.data_dir or out / "sair-data"
    sla_ms = load_profile(APP).pipeline.sla_ms
    handle = None
    started = time.time()
    try:
        console.print(f"starting a local Ray cluster ({opts.num_cpus} logical CPUs) ...")
        ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", log_to_driver=False, logging_level=logging.ERROR)
        admin = ServeAdmin(discover_dashboard_url(), timeout_s=180)  # the first PUT starts Serve
        console.print(f"deploying {APP} from {SERVE_CONFIG.name} "
                      "(external_scaler_enabled: true) ...")
        cfg = yaml.safe_load(SERVE_CONFIG.read_text())
        cfg["http_options"] = {"host": "127.0.0.1", "port": opts.http_port}
        admin.deploy(cfg)
        _wait_running(admin, APP, console)
        console.print(f"attaching SAIR (policy {opts.policy}) ...")
        handle = attach(APP, DEMO_CONFIG, opts.policy, data_dir=data_dir)
        plan = _plan(opts)
        runner = LoadRunner(f"http://127.0.0.1:{opts.http_port}/{APP}", plan,
                            image_bodies(*opts.image_px), concurrency=256, timeout_s=60)
        t0 = time.time()
        mon = Monitor(APP, admin, handle, t0)
        console.print(f"driving {len(plan)} requests over {opts.duration_s:g} s: "
                      f"{opts.base_rps:g} req/s, after {opts.warmup_s:g} s spikes of "
                      f"{opts.spike_rps:g} req/s ({opts.spike_s:g} s every {opts.period_s:g} s)"
                      "; Ctrl-C stops early and still reports")

        async def drive() -> None:
            task = asyncio.create_task(runner.run())
            with Live(render(mon, sla_ms, "starting"), console=console,
                      refresh_per_second=2) as live:
                while not task.done():
                    await asyncio.sleep(opts.sample_s)
                    try:
                        await asyncio.to_thread(mon.sample)
                    except Exception as e:  # a slow metrics read must not stop the load
                        log.warning("monitor sample failed: %s", e)
                    live.update(render(mon, sla_ms, f"{time.time() - t0:.0f} / "
                                                    f"{opts.duration_s:g} s"))
            await task

        interrupted = False
        try:
            asyncio.run(drive())
        except KeyboardInterrupt:
            interrupted = True
            console.print("interrupted: stopping the load and writing the report")
        summary = summarize(runner.results, max(time.time() - t0, 1e-9), runner.max_in_flight)
        decisions = handle.decisions(last=1000)
        status = handle.status()
        return write_report(out, opts, mon.samples, mon.t0, decisions, status,
                            runner.results, summary, sla_ms, interrupted,
                            app_data_dir(APP, data_dir) / LOG_FILE)
    finally:
        console.print("shutting down: SAIR controller, Serve, Ray ...")
        if handle is not None:
            try:
                handle.stop()
            except Exception as e:
                log.warning("stopping the controller failed: %s", e)
        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            except Exception as e:
                log.warning("serve shutdown failed: %s", e)
            ray.shutdown()
        console.print(f"done in {time.time() - started:.0f} s")


def _wait_running(admin: Any, app: str, console: Any, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while True:
        a = admin.details().get("applications", {}).get(app, {})
        if a.get("status") == "RUNNING":
            return
        if a.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"{app} failed to deploy: {a.get('message')}")
        if time.time() > deadline:
            raise TimeoutError(f"{app} not running after {timeout_s:g} s ({a.get('status')})")
        time.sleep(1)


def write_report(out: Path, opts: DemoOptions, samples: list[Sample], t0: float,
                 decisions: list[dict[str, Any]], status: dict[str, Any], results: list[Any],
                 summary: Any, sla_ms: float, interrupted: bool, log_path: Path) -> Path:
    """report.md (the load, the scaling decisions), report.html with its PNGs (`sair
    report` on the controller's decision log `log_path`), timeline.csv, decisions.json,
    requests.parquet; returns report.md's path."""
    from sair_ray.loadgen import write_results

    write_results(results, out / "requests.parquet")
    (out / "decisions.json").write_text(json.dumps(decisions, indent=1, default=str))
    stages = sorted({n for s in samples for n in s.stages})
    with open(out / "timeline.csv", "w") as f:
        f.write("t_s,arrival_rps,p99_ms," + ",".join(
            f"{n}_{k}" for n in stages for k in ("replicas", "queue", "p99_ms")) + "\n")
        for s in samples:
            row = [f"{s.t:.1f}", f"{s.arrival_rps:.2f}", f"{s.p99_ms:.1f}"]
            for n in stages:
                st = s.stages.get(n, {})
                row += [str(st.get("replicas", "")), str(st.get("queue", "")),
                        f"{st.get('p99_ms', math.nan):.1f}"]
            f.write(",".join(row) + "\n")
    html = _html_report(log_path, out)
    c = summary.counts
    answered = c.get("ok", 0) + c.get("http_error", 0)
    scale = [d for d in decisions if any(a.get("replicas") for a in d["action"].values())]
    lines = [
        f"# SAIR demo: {APP}", "",
        f"Policy `{status.get('policy')}`, {status.get('rounds_ok', 0)} decision rounds "
        f"({status.get('rounds_failed', 0)} failed), burst workload {opts.base_rps:g} -> "
        f"{opts.spike_rps:g} req/s, {opts.duration_s:g} s"
        + (" (interrupted)" if interrupted else "") + ".", "",
        "| requests | ok | HTTP errors | timeouts | no answer | p50 ms | p99 ms | SLA ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary.sent} | {c.get('ok', 0)} | {c.get('http_error', 0)} | "
        f"{c.get('timeout', 0)} | {c.get('conn_error', 0) + c.get('cancelled', 0)} | "
        f"{summary.p50_ms:.0f} | {summary.p99_ms:.0f} | {sla_ms:g} |", "",
        f"Every sent request got an answer: {answered == summary.sent} "
        f"({answered} of {summary.sent}).", "",
        f"Controller CPU: {100 * status.get('cpu_frac', 0):.2f} % of one core "
        "(the LLM server, if any, runs in its own process and is not included).", "",
        "## Scaling decisions", "",
        "| t (s) | round | action | rationale |", "|---|---|---|---|",
    ]
    for d in scale:
        act = "; ".join(f"{n} " + " ".join(f"{k} {v:+g}" for k, v in a.items() if v)
                        for n, a in d["action"].items())
        why = (d["rationale"] or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {d['time'] - t0:.0f} | {d['round']} | {act} | {why} |")
    lines += ["", "## Figures", "",
              f"[{html.name}]({html.name}): p99 vs SLA, replicas and GPU rate per stage, "
              "cost, reward and its terms, probes vs policy decisions, the Pareto frontier "
              "(the same page as `sair report`)." if html else
              "none were written (matplotlib missing, or no decision logged: see the "
              "warnings above)"]
    lines += ["", "Files: `timeline.csv` (samples every "
              f"{opts.sample_s:g} s), `decisions.json`, `requests.parquet` (every request), "
              "`sair-data/` (memory, state, decision log)."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    # The machine-readable verdict, read by `sair demo --check` (and so by CI).
    (out / "summary.json").write_text(json.dumps({
        "app": APP, "policy": status.get("policy"), "interrupted": interrupted,
        "planned": summary.planned, "sent": summary.sent, "answered": answered,
        "ok": c.get("ok", 0), "p99_ms": summary.p99_ms, "sla_ms": sla_ms,
        "rounds_ok": status.get("rounds_ok", 0),
        "rounds_failed": status.get("rounds_failed", 0),
        "report_html": html.name if html else None}, indent=1, default=str))
    return report


def check_summary(out: Path) -> list[str]:
    """What makes a demo run a failure, from its summary.json: a request that got no
    answer, load that was not all sent, or a missing report page. Empty when it passed."""
    path = out / "summary.json"
    if not path.exists():
        return [f"no {path} (the run did not finish)"]
    s = json.loads(path.read_text())
    problems = []
    if s["interrupted"]:
        problems.append("the run was interrupted")
    if s["sent"] != s["planned"]:
        problems.append(f"{s['planned'] - s['sent']} of {s['planned']} planned requests "
                        "were not sent")
    if s["answered"] != s["sent"]:
        problems.append(f"{s['sent'] - s['answered']} of {s['sent']} requests got no answer")
    if not s["report_html"] or not (out / s["report_html"]).exists():
        problems.append("report.html was not written")
    return problems


def _html_report(log_path: Path, out: Path) -> Path | None:
    """`sair report`'s page for the demo's decision log, or None without matplotlib or
    before the first decision."""
    import importlib.util

    from sair_ray.report.html import write_report as write_html
    from sair_ray.report.records import LogError, load

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("no figures: matplotlib is not installed (pip install 'sair-ray[bench]')")
        return None
    try:
        return write_html(load(log_path), out)
    except (LogError, ValueError) as e:  # no log yet: the run ended before its first round
        log.warning("no figures: %s", e)
        return None

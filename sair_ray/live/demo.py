"""`sair demo` / `make demo`: SAIR live on a laptop, CPU only, no network.

Two pipelines, both image_classification on a private local Ray with SAIR attached as the
detached controller actor (policy `sair` by default: the embedded llama.cpp model):

- default, **emulated compute** (`serve_apps/emulated.py`, docs/emulation.md): one Serve
  deployment per profile stage whose replicas wait out the simulator's service times
  instead of computing, on a Ray whose *logical* resources are the profile's cluster, in
  slow motion (`time_scale` 10: service times x 10, request rates / 10, the SLA 1 s ->
  10 s). Replicas use next to no CPU, so the 2 cores carry the proxy, the load and the
  policy model, and scaling out really adds capacity: the load's spikes need three
  preprocess replicas where the app starts with one. The controller reads Serve's own
  metrics.
- `real_models` (`sair demo --real-models`): the real app (`serve_apps/configs/
  image_classification.yaml`: PIL decode, MobileNetV2 on the CPU), instrumented with
  `StageMeter`. On 2 cores the replicas compete with everything else for the same cores,
  so more replicas add little capacity there.

Steps: 1. start Ray, 2. deploy the app (declarative, `external_scaler_enabled: true`),
3. attach SAIR, 4. drive a burst workload over HTTP (sair_ray.loadgen) while a live table
shows per-stage replicas, queue and p99 against the SLA and the last decision with its
rationale, 5. write `sair report`'s HTML page (figures from the controller's decision
log, `sair_ray.report.html`) and a Markdown summary of the load, the SLA per load phase
and the scaling decisions, and shut everything down, also on Ctrl-C.

The monitor samples the app's metrics every `sample_s` seconds for the live table and
`timeline.csv` (end to end: the load generator's own latencies); the figures come from
the decision log, as for any other run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serve_apps import config_path

log = logging.getLogger(__name__)

APP = "image_classification"
SERVE_CONFIG = config_path(APP)
DEMO_CONFIG: dict[str, Any] = {  # rounds fit a few minutes; the defaults are 30 s / 60 s / 120 s
    "loop": {"decision_interval_s": 15, "settle_s": 5},
    "validator": {"cooldown_up_s": 15, "cooldown_down_s": 60, "replicas_max": 4},
    # the app and the embedded model share 2 cores here: replies can take 15-25 s
    "policy": {"llm_timeout_s": 30},
    # a demo is too short for a probe that removes capacity mid-burst to be worth it
    "exploration": {"safe": True},
}
# The emulated demo: Serve's own metrics (the emulated app has no StageMeter). Its GPU
# rate stays at 1.0: emulated replicas load no cuda_tb shim, so SAIR's backend pins it
# (`RayServeBackend._live_pipeline`).
EMULATED_CONFIG: dict[str, Any] = {**DEMO_CONFIG, "pipeline": {"metrics": "serve"}}
# Serve's router re-probes a saturated stage with a back-off of up to 0.5 s, which idles a
# replica of a `max_ongoing_requests = 1` stage between requests (docs/emulation.md, "Where
# Serve differs"); the demo's app caps it at 10 ms, as the fidelity runs do.
ROUTER_MAX_BACKOFF_S = 0.01
INGRESS_CPU_M = 1          # see sair_ray.emulate.controller_profile
REAL_MODELS = "real models"
FIRST_ROUND_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class DemoOptions:
    """Rates are what is sent, in live requests per second. The defaults are the emulated
    demo's; `for_mode(real_models=True)` gives the real-model demo's."""

    duration_s: float = 300.0
    policy: str = "sair"
    real_models: bool = False
    base_rps: float = 1.0                     # one emulated preprocess replica at 0.6 load
    spike_rps: float = 3.0                    # three replicas at 0.6 load
    period_s: float = 90.0
    spike_s: float = 45.0
    warmup_s: float = 30.0                    # base rate only, before the first spike
    time_scale: float = 10.0                  # emulated: service times and SLA x this
    image_px: tuple[int, int] = (3200, 2400)  # real models: a heavier preprocess stage
    num_cpus: int = 8                         # real models: logical CPUs Ray may hand out
    http_port: int = 8000
    dashboard_port: int = 8265
    out_dir: Path = Path("runs/demo")
    data_dir: Path | None = None
    sample_s: float = 2.0
    seed: int = 0

    @classmethod
    def for_mode(cls, real_models: bool = False, **kw: Any) -> DemoOptions:
        """The mode's defaults, overridden by the `kw` that are not None."""
        base: dict[str, Any] = {"real_models": real_models}
        if real_models:
            base.update(duration_s=180.0, base_rps=2.0, spike_rps=6.0)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    @property
    def label(self) -> str:
        """What the pipeline computes with, for every title and summary."""
        from sair_ray.emulate import EMULATED

        return REAL_MODELS if self.real_models else (
            f"{EMULATED}, time scale {self.time_scale:g}")


@dataclass(frozen=True)
class Phase:
    """One stretch of constant offered load: the warm-up, a spike or the base between."""

    name: str
    start_s: float
    end_s: float
    rps: float
    spike: int = 0          # 1 for the first spike, 2 for the second, ...; 0 for base load


def phases(opts: DemoOptions) -> list[Phase]:
    """The load's phases over [0, duration_s): `warmup_s` at the base rate, then spikes
    of `spike_s` every `period_s` with the base rate between."""
    out = [Phase("warm-up", 0.0, min(opts.warmup_s, opts.duration_s), opts.base_rps)]
    t, k = opts.warmup_s, 1
    while t < opts.duration_s:
        e = min(t + opts.spike_s, opts.duration_s)
        out.append(Phase(f"spike {k}", t, e, opts.spike_rps, k))
        b = min(t + opts.period_s, opts.duration_s)
        if b > e:
            out.append(Phase(f"base {k}", e, b, opts.base_rps))
        t, k = t + opts.period_s, k + 1
    return [p for p in out if p.end_s > p.start_s]


@dataclass(frozen=True)
class Window:
    phase: Phase
    requests: int
    ok: int
    p99_ms: float
    complete: bool          # the run covered the whole phase


def windows(opts: DemoOptions, results: Sequence[Any]) -> list[Window]:
    """Each load phase's requests (by planned send time) and their end-to-end p99."""
    nominal = {True: opts.spike_s, False: opts.period_s - opts.spike_s}
    out = []
    for p in phases(opts):
        rs = [r for r in results if p.start_s <= r.scheduled_s < p.end_s]
        lat = [r.latency_ms for r in rs if r.status == "ok"]
        p99 = float(np.percentile(lat, 99)) if lat else math.nan
        full = opts.warmup_s if p.name == "warm-up" else nominal[bool(p.spike)]
        out.append(Window(p, len(rs), len(lat), p99, p.end_s - p.start_s >= full - 1e-6))
    return out


def after_first_spike(opts: DemoOptions, wins: Sequence[Window], sla_ms: float
                      ) -> dict[str, Any]:
    """The demo's verdict: did p99 stay under the SLA in every load phase after the first
    spike (the spikes after it, the base load between)? The first spike is when SAIR
    learns that the load needs more replicas; from then on it should have them in time.
    `checked` is False for a run too short to hold a whole second spike (CI's 60 s smoke
    run), where there is nothing to judge."""
    first_end = opts.warmup_s + opts.spike_s
    later = [w for w in wins if w.phase.start_s >= first_end - 1e-9 and w.requests]
    checked = any(w.phase.spike >= 2 and w.complete for w in later)
    over = [w.phase.name for w in later if not w.p99_ms <= sla_ms]
    lat_ok = [w for w in later if w.ok]
    return {"checked": checked, "held": checked and not over, "phases_over_sla": over,
            "worst_p99_ms": max((w.p99_ms for w in lat_ok), default=math.nan),
            "phases": [{"name": w.phase.name, "start_s": w.phase.start_s,
                        "end_s": w.phase.end_s, "rps": w.phase.rps, "requests": w.requests,
                        "ok": w.ok, "p99_ms": w.p99_ms, "complete": w.complete}
                       for w in wins]}


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


class RollingWindow:
    """A `ServeMetrics` read over about the last `window_s` at every call. ServeMetrics
    differences each scrape of the metrics agents against the one before it; reading
    every `sample_s` would give windows of `sample_s` (a handful of requests), so each
    read here is differenced against the scrape taken `window_s` earlier instead."""

    def __init__(self, source: Any, window_s: float) -> None:
        self.source, self.window_s = source, window_s
        self._scrapes: deque[tuple[float, Any]] = deque()

    def window(self, start: float, end: float) -> Any:
        while len(self._scrapes) > 1 and self._scrapes[1][0] <= end - self.window_s:
            self._scrapes.popleft()
        if self._scrapes:
            self.source._last = self._scrapes[0][1]   # the base of this difference
        w = self.source.window(start, end)
        self._scrapes.append((end, self.source._last))
        return w


class Monitor:
    """Samples metrics, replica targets and the load generator's results; keeps the
    timeline and the last decision. `metrics` has `window(start, end) -> AppWindow` (the
    app's metrics actor, or Serve's metrics); `stages` are the stages to show; end-to-end
    p99 and arrival rate come from `results` (the load generator's, updated in place) over
    the last `window_s`."""

    def __init__(self, app: str, admin: Any, handle: Any, t0: float, *, metrics: Any,
                 stages: Sequence[str], results: Sequence[Any], window_s: float = 10.0
                 ) -> None:
        self.app, self.admin, self.handle, self.t0 = app, admin, handle, t0
        self.metrics = metrics
        self.stage_names = list(stages)
        self.results = results
        self.window_s = window_s
        self.samples: list[Sample] = []
        self.metric_misses = 0           # samples whose stage metrics could not be read
        self.last_decision: dict[str, Any] | None = None
        self.status: dict[str, Any] = {}

    def end_to_end(self, now: float) -> tuple[float, float]:
        """(arrival req/s, p99 ms) of the requests sent / answered in the last window."""
        lo = now - self.window_s
        sent = 0
        lat = []
        for r in list(self.results):
            if math.isfinite(r.sent_at) and r.sent_at >= lo:
                sent += 1
            if r.status == "ok" and r.sent_at + r.latency_ms / 1e3 >= lo:
                lat.append(r.latency_ms)
        return sent / self.window_s, float(np.percentile(lat, 99)) if lat else math.nan

    def sample(self) -> Sample:
        now = time.time()
        try:
            w = self.metrics.window(now - self.window_s, now)
        except Exception as e:  # a slow scrape on a busy machine: this sample goes without
            log.debug("stage metrics unavailable for this sample: %s", e)
            self.metric_misses += 1
            w = None
        deps = self.admin.details()["applications"][self.app]["deployments"]
        stages = {}
        for name in self.stage_names:
            sw = w.stages.get(name) if w is not None else None
            stages[name] = {"replicas": deps.get(name, {}).get("target_num_replicas", 0),
                            "queue": sw.queue if sw else math.nan,
                            "p99_ms": _finite(sw.p99_ms) if sw else math.nan,
                            "util": _finite(sw.util) if sw else math.nan}
        arrival, p99 = self.end_to_end(now)
        s = Sample(now - self.t0, arrival, p99, stages)
        self.samples.append(s)
        decisions = self.handle.decisions(1)
        if decisions:
            self.last_decision = decisions[-1]
        self.status = self.handle.status()
        return s


def render(mon: Monitor, sla_ms: float, progress: str, label: str = "") -> Any:
    """The live view: one row per stage, then the last decision and its rationale."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    s = mon.samples[-1] if mon.samples else None
    what = f" ({label})" if label else ""
    t = Table(title=f"{mon.app}{what} -- {progress}", expand=True)
    for col in ("stage", "replicas", "queue", "p99 ms (10 s)", "busy"):
        t.add_column(col, justify="right" if col != "stage" else "left")
    if s is not None:
        for name, st in s.stages.items():
            t.add_row(name, str(st["replicas"]), _fmt(st["queue"]), _fmt(st["p99_ms"]),
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
                        for n, a in d["action"].items() if any(a.values())) or "no change"
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
    """The real-model demo's load: `warmup_s` of Poisson at the base rate, then the burst
    pattern, `duration_s` in all."""
    from sair_ray.loadgen import build_plan, workload_from_options
    from sair_ray.loadgen.plan import LoadPlan

    warm_s = min(max(opts.warmup_s, 0.0), opts.duration_s)
    burst_s = opts.duration_s - warm_s
    burst = build_plan(workload_from_options(
        "burst", base=opts.base_rps, spike=opts.spike_rps, period_s=opts.period_s,
        spike_s=opts.spike_s), max(burst_s, 1.0), seed=opts.seed)
    if warm_s <= 0:
        return burst
    warm = build_plan(workload_from_options("poisson", rate=opts.base_rps), warm_s,
                      seed=opts.seed + 1)
    if burst_s <= 0:
        return warm
    return LoadPlan(np.concatenate([warm.times, burst.times + warm_s]),
                    workload={"warmup": warm.workload, "burst": burst.workload},
                    duration_s=opts.duration_s)


@dataclass
class _Setup:
    """What a mode's set-up leaves running: the controller handle, the load and where the
    monitor reads the stages from."""

    admin: Any
    handle: Any
    runner: Any
    metrics: Any
    stages: list[str]
    sla_ms: float


def _setup_real(opts: DemoOptions, console: Any, data_dir: Path) -> _Setup:
    import ray

    from sair_ray.backends.ray_serve import ServeAdmin, discover_dashboard_url
    from sair_ray.live import attach
    from sair_ray.loadgen import LoadRunner
    from sair_ray.observe import MetricsClient
    from sair_ray.profiles import load_profile

    console.print(f"starting a local Ray cluster ({opts.num_cpus} logical CPUs) ...")
    ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=opts.dashboard_port,
             log_to_driver=False, logging_level=logging.ERROR)
    admin = ServeAdmin(discover_dashboard_url(), timeout_s=180)  # the first PUT starts Serve
    console.print(f"deploying {APP} from {SERVE_CONFIG.name} "
                  "(real models, external_scaler_enabled: true) ...")
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": opts.http_port}
    admin.deploy(cfg)
    _wait_running(admin, APP, console)
    console.print(f"attaching SAIR (policy {opts.policy}) ...")
    handle = attach(APP, DEMO_CONFIG, opts.policy, data_dir=data_dir)
    runner = LoadRunner(f"http://127.0.0.1:{opts.http_port}/{APP}", _plan(opts),
                        image_bodies(*opts.image_px), concurrency=256, timeout_s=60)
    prof = load_profile(APP)
    return _Setup(admin, handle, runner, MetricsClient(APP), list(prof.pipeline.stage_names),
                  prof.pipeline.sla_ms)


def emulated_app_config(opts: DemoOptions, *, cold_start: bool) -> dict[str, Any]:
    """The emulated app's Serve config: the profile in slow motion (`time_scale`), cold
    starts in real seconds, the router back-off capped, the ingress reserving
    INGRESS_CPU_M (the controller's profile pins it there)."""
    from sair_ray.fidelity import router_env
    from serve_apps.emulated import INGRESS, emulated_config

    cfg = emulated_config(APP, time_scale=opts.time_scale, cold_start_scale=1.0, name=APP,
                          http_port=opts.http_port, seed=opts.seed, cold_start=cold_start,
                          env=router_env(ROUTER_MAX_BACKOFF_S))
    ing = next(d for d in cfg["applications"][0]["deployments"] if d["name"] == INGRESS)
    ing["ray_actor_options"] = {"num_cpus": INGRESS_CPU_M / 1000}
    return cfg


def emulated_requests(opts: DemoOptions) -> Any:
    """The requests of the emulated demo, as the simulator draws them (arrival times and
    each stage's reference service time): `warmup_s` at the base rate, then the bursts."""
    from sair_ray.emulate import request_plan, scale_profile
    from sair_ray.profiles import load_profile
    from sair_ray.workloads import Burst

    prof = scale_profile(load_profile(APP), opts.time_scale, 1.0)
    load = Burst(opts.base_rps, opts.spike_rps, opts.period_s, opts.spike_s,
                 phase_s=opts.warmup_s)
    return request_plan(prof, load, opts.duration_s, opts.seed)


def _setup_emulated(opts: DemoOptions, console: Any, data_dir: Path,
                    stack: contextlib.ExitStack) -> _Setup:
    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.backends.serve_metrics import ServeMetrics
    from sair_ray.emulate import controller_profile, emulated_ray, scale_profile
    from sair_ray.live import attach
    from sair_ray.loadgen import LoadPlan, LoadRunner
    from sair_ray.profiles import load_profile
    from serve_apps.emulated import INGRESS

    base = load_profile(APP)
    prof = scale_profile(base, opts.time_scale, 1.0)
    c = base.pipeline.cluster
    console.print(f"starting a local Ray cluster shaped like the profile's ({c.cpus:g} "
                  f"logical CPUs, {c.gpus:g} GPUs; the replicas emulate their work and "
                  "sleep) ...")
    # the emulated Ray records Serve's latencies in finer buckets than Serve's default
    # (sair_ray.emulate.LATENCY_BUCKETS_MS): its 10 -> 60 s bucket holds the 10 s SLA
    cluster = stack.enter_context(emulated_ray(base, dashboard_port=opts.dashboard_port))
    admin = ServeAdmin(cluster.dashboard, timeout_s=180)
    stages = list(prof.pipeline.stage_names)
    init = {n: a.replicas for n, a in prof.pipeline.initial_allocation().items()}
    console.print(f"deploying {APP} with emulated compute (serve_apps/emulated.py, time "
                  f"scale {opts.time_scale:g}, external_scaler_enabled: true) ...")
    # the initial replicas start warm; those SAIR adds pay the profile's cold start
    admin.deploy(emulated_app_config(opts, cold_start=False))
    _wait_running(admin, APP, console, replicas=init)
    admin.deploy(emulated_app_config(opts, cold_start=True))
    time.sleep(1.0)
    _wait_running(admin, APP, console, replicas=init)
    profile = opts.out_dir / "sair-profile.yaml"
    profile.write_text(yaml.safe_dump(controller_profile(
        APP, opts.time_scale, replicas_max=EMULATED_CONFIG["validator"]["replicas_max"],
        ingress=INGRESS, ingress_cpu_m=INGRESS_CPU_M), sort_keys=False))
    console.print(f"attaching SAIR (policy {opts.policy}, Serve's own metrics) ...")
    handle = attach(APP, EMULATED_CONFIG, opts.policy, profile=str(profile),
                    data_dir=data_dir, dashboard_url=cluster.dashboard)
    rp = emulated_requests(opts)
    bodies = [json.dumps(rp.body(i)).encode() for i in range(len(rp))]
    runner = LoadRunner(f"http://127.0.0.1:{opts.http_port}/{APP}",
                        LoadPlan(rp.times, duration_s=opts.duration_s), bodies.__getitem__,
                        concurrency=256, timeout_s=120)
    # a scrape of Ray's metrics agent can take seconds while the cores are busy
    metrics = RollingWindow(ServeMetrics(APP, [INGRESS, *stages], INGRESS, timeout_s=5.0),
                            10.0)
    return _Setup(admin, handle, runner, metrics, stages, prof.pipeline.sla_ms)


def run_demo(opts: DemoOptions, console: Any) -> Path:
    """Everything, start to report; returns the Markdown summary's path (report.html
    beside it). Cleans up on any exit."""
    out = opts.out_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data_dir = opts.data_dir or out / "sair-data"
    started = time.time()
    su: _Setup | None = None
    try:
        with contextlib.ExitStack() as stack:  # the emulated demo's Ray closes with it
            try:
                su = (_setup_real(opts, console, data_dir) if opts.real_models else
                      _setup_emulated(opts, console, data_dir, stack))
                return _drive(opts, console, su, data_dir)
            finally:
                console.print("shutting down: SAIR controller, Serve, Ray ...")
                _stop(opts, su)
    finally:
        console.print(f"done in {time.time() - started:.0f} s")


def _drive(opts: DemoOptions, console: Any, su: _Setup, data_dir: Path) -> Path:
    """The load with the live table, then the report."""
    from rich.live import Live

    from sair_ray.files import LOG_FILE, app_data_dir
    from sair_ray.loadgen import summarize

    handle, runner, sla_ms = su.handle, su.runner, su.sla_ms
    _first_round(handle, console)
    load_before = _loadavg()
    t0 = time.time()
    mon = Monitor(APP, su.admin, handle, t0, metrics=su.metrics, stages=su.stages,
                  results=runner.results)
    console.print(
        f"driving {len(runner.plan)} requests over {opts.duration_s:g} s ({opts.label}): "
        f"{opts.base_rps:g} req/s, after {opts.warmup_s:g} s spikes of {opts.spike_rps:g} "
        f"req/s ({opts.spike_s:g} s every {opts.period_s:g} s); SLA {sla_ms:g} ms; Ctrl-C "
        "stops early and still reports")

    async def drive() -> None:
        task = asyncio.create_task(runner.run())
        with Live(render(mon, sla_ms, "starting", opts.label), console=console,
                  refresh_per_second=2) as live:
            while not task.done():
                await asyncio.sleep(opts.sample_s)
                try:
                    await asyncio.to_thread(mon.sample)
                except Exception as e:  # a slow metrics read must not stop the load
                    log.warning("monitor sample failed: %s", e)
                live.update(render(mon, sla_ms, f"{time.time() - t0:.0f} / "
                                   f"{opts.duration_s:g} s", opts.label))
        await task

    interrupted = False
    try:
        asyncio.run(drive())
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted: stopping the load and writing the report")
    summary = summarize(runner.results, max(time.time() - t0, 1e-9), runner.max_in_flight)
    decisions = handle.decisions(last=1000)
    status = {**handle.status(), "machine_load": [load_before, _loadavg()]}
    return write_report(opts.out_dir, opts, mon.samples, mon.t0, decisions, status,
                        runner.results, summary, sla_ms, interrupted,
                        app_data_dir(APP, data_dir) / LOG_FILE)


def _loadavg() -> float:
    """The machine's 1-minute load average (NaN where the OS does not say)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return math.nan


def _first_round(handle: Any, console: Any, timeout_s: float = FIRST_ROUND_TIMEOUT_S
                 ) -> None:
    """Wait for the controller's first round before the load starts: that round starts
    the policy model (the embedded llama.cpp server: tens of seconds on 2 busy cores),
    which would otherwise land in the middle of the load and delay every round after it.
    Gives up after `timeout_s` (the load then starts anyway)."""
    console.print("waiting for SAIR's first round (it starts the policy model) ...")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = handle.status()
        if st.get("rounds_ok", 0) + st.get("rounds_failed", 0) > 0:
            return
        time.sleep(1.0)
    log.warning("no decision round within %.0f s; starting the load anyway", timeout_s)


def _stop(opts: DemoOptions, su: _Setup | None) -> None:
    """Stop the controller; for the real-model demo also Serve and Ray (the emulated
    demo's are stopped by `emulated_ray` when its context closes)."""
    import ray

    if su is not None:
        try:
            su.handle.stop()
        except Exception as e:
            log.warning("stopping the controller failed: %s", e)
    if opts.real_models and ray.is_initialized():
        try:
            from ray import serve

            serve.shutdown()
        except Exception as e:
            log.warning("serve shutdown failed: %s", e)
        ray.shutdown()


def _wait_running(admin: Any, app: str, console: Any, timeout_s: float = 300, *,
                  replicas: Mapping[str, int] | None = None) -> None:
    """Until the app is RUNNING (and each stage in `replicas` has that many replicas
    RUNNING)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            a = admin.details().get("applications", {}).get(app, {})
        except Exception:   # the dashboard may still be starting
            a = {}
        deps = a.get("deployments") or {}
        if a.get("status") == "RUNNING" and all(
                sum(r.get("state") == "RUNNING" for r in (deps.get(n) or {}).get("replicas", []))
                >= k for n, k in (replicas or {}).items()):
            return
        if a.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"{app} failed to deploy: {a.get('message')}")
        if time.time() > deadline:
            raise TimeoutError(f"{app} not running after {timeout_s:g} s ({a.get('status')})")
        time.sleep(1)


def rounds_over_sla(decisions: Sequence[dict[str, Any]], since: float = -math.inf
                    ) -> tuple[int, int]:
    """(rounds whose observed p99 was over the SLA, rounds with a p99) among the decisions
    at or after `since` (the controller's view: its metrics window, not the client's)."""
    seen = [d for d in decisions if d.get("time", -math.inf) >= since
            and math.isfinite(_finite(d.get("p99_ms"))) and _finite(d.get("sla_ms")) > 0]
    return sum(_finite(d["p99_ms"]) > _finite(d["sla_ms"]) for d in seen), len(seen)


def replicas_used(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """Per stage: replicas at the first sample, the most at any sample, at the last."""
    out: dict[str, dict[str, int]] = {}
    for n in dict.fromkeys(n for s in samples for n in s.stages):
        xs = [int(s.stages[n]["replicas"]) for s in samples if n in s.stages]
        out[n] = {"start": xs[0], "max": max(xs), "end": xs[-1]}
    return out


def write_report(out: Path, opts: DemoOptions, samples: list[Sample], t0: float,
                 decisions: list[dict[str, Any]], status: dict[str, Any], results: list[Any],
                 summary: Any, sla_ms: float, interrupted: bool, log_path: Path) -> Path:
    """report.md (the load, p99 per load phase against the SLA, the scaling decisions),
    report.html with its PNGs (`sair report` on the controller's decision log
    `log_path`), timeline.csv, decisions.json, requests.parquet, summary.json (what
    `--check` reads); returns report.md's path."""
    from sair_ray.loadgen import write_results

    write_results(results, out / "requests.parquet")
    (out / "decisions.json").write_text(json.dumps(decisions, indent=1, default=str))
    stages = list(dict.fromkeys(n for s in samples for n in s.stages))
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
    html = _html_report(log_path, out, opts.label)
    c = summary.counts
    answered = c.get("ok", 0) + c.get("http_error", 0)
    wins = windows(opts, results)
    verdict = after_first_spike(opts, wins, sla_ms)
    first_end = opts.warmup_s + opts.spike_s
    over_all = rounds_over_sla(decisions)
    over_after = rounds_over_sla(decisions, t0 + first_end)
    used = replicas_used(samples) if samples else {}
    scale = [d for d in decisions if any(a.get("replicas") for a in d["action"].values())]

    def share(x: tuple[int, int]) -> str:
        return f"{x[0]} of {x[1]}" + (f" ({100 * x[0] / x[1]:.0f} %)" if x[1] else "")

    if verdict["checked"]:
        held = "p99 stayed under the SLA after the first spike: " + (
            "**yes**." if verdict["held"] else
            f"**no**, over in {', '.join(verdict['phases_over_sla'])}.")
    else:
        held = ("p99 after the first spike is not judged: the run ends before a whole "
                "second spike.")
    what = ("Emulated compute: the replicas wait out the image_classification profile's "
            f"service times (`serve_apps/emulated.py`), {opts.time_scale:g} times slower "
            f"than the profile's, with request rates {opts.time_scale:g} times lower and the "
            f"SLA {opts.time_scale:g} times longer ({sla_ms:g} ms); Ray's logical resources "
            "are the profile's cluster. The control plane (Serve's proxy, routers, "
            "replicas as processes, the scaling API) and SAIR are real."
            if not opts.real_models else
            "Real models: PIL decode and MobileNetV2 on this machine's CPU cores.")
    lines = [
        f"# SAIR demo: {APP} ({opts.label})", "", what, "",
        f"Policy `{status.get('policy')}`, {status.get('rounds_ok', 0)} decision rounds "
        f"({status.get('rounds_failed', 0)} failed), burst workload {opts.base_rps:g} -> "
        f"{opts.spike_rps:g} req/s ({opts.spike_s:g} s spikes every {opts.period_s:g} s "
        f"after {opts.warmup_s:g} s at the base rate), {opts.duration_s:g} s"
        + (" (interrupted)" if interrupted else "") + ".", "",
        "| requests | ok | HTTP errors | timeouts | no answer | p50 ms | p99 ms | SLA ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary.sent} | {c.get('ok', 0)} | {c.get('http_error', 0)} | "
        f"{c.get('timeout', 0)} | {c.get('conn_error', 0) + c.get('cancelled', 0)} | "
        f"{summary.p50_ms:.0f} | {summary.p99_ms:.0f} | {sla_ms:g} |", "",
        f"Every sent request got an answer: {answered == summary.sent} "
        f"({answered} of {summary.sent}).", "",
        "## The SLA, load phase by load phase", "",
        held, "",
        "| phase | s after the load started | offered req/s | requests | p99 ms | SLA ms "
        "| within |", "|---|---|---|---|---|---|---|",
    ]
    for w in wins:
        mark = ("-" if not w.ok else "yes" if w.p99_ms <= sla_ms else "**no**")
        lines.append(f"| {w.phase.name}{'' if w.complete else ' (cut)'} | "
                     f"{w.phase.start_s:.0f}-{w.phase.end_s:.0f} | {w.phase.rps:g} | "
                     f"{w.requests} | {_fmt(w.p99_ms)} | {sla_ms:g} | {mark} |")
    lines += ["", "p99: the load generator's end-to-end latencies of the phase's requests "
              "(by planned send time).", "",
              f"Rounds whose observed p99 was over the SLA (the controller's metrics "
              f"window): {share(over_all)} in all, {share(over_after)} after the first "
              "spike.", ""]
    if used:
        lines.append("Replicas (first sample -> most -> last sample): " + ", ".join(
            f"{n} {u['start']} -> {u['max']} -> {u['end']}" for n, u in used.items()) + ".")
        lines.append("")
    load = status.get("machine_load")
    if load:
        lines += [f"Machine: {os.cpu_count()} cores, load average (1 min) "
                  f"{_fmt(load[0], 1)} when the load started, {_fmt(load[1], 1)} when it "
                  "ended (other jobs included).", ""]
    lines += [
        f"Controller CPU: {100 * status.get('cpu_frac', 0):.2f} % of one core "
        "(the LLM server, if any, runs in its own process and is not included).", "",
        "## Scaling decisions", "",
        "| s after the load started | round | action | rationale |", "|---|---|---|---|",
    ]
    for d in scale:
        act = "; ".join(f"{n} " + " ".join(f"{k} {v:+g}" for k, v in a.items() if v)
                        for n, a in d["action"].items() if any(a.values()))
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
        "app": APP, "compute": opts.label, "policy": status.get("policy"),
        "interrupted": interrupted, "duration_s": opts.duration_s,
        "planned": summary.planned, "sent": summary.sent, "answered": answered,
        "ok": c.get("ok", 0), "p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms,
        "sla_ms": sla_ms, "rounds_ok": status.get("rounds_ok", 0),
        "rounds_failed": status.get("rounds_failed", 0),
        "machine_load": status.get("machine_load"), "cores": os.cpu_count(),
        "rounds_over_sla": list(over_all), "rounds_over_sla_after_first_spike":
            list(over_after), "replicas": used,
        "after_first_spike": verdict,
        "report_html": html.name if html else None}, indent=1, default=_json_default))
    return report


def _json_default(x: Any) -> Any:
    return str(x)


def check_summary(out: Path) -> list[str]:
    """What makes a demo run a failure, from its summary.json: a request that got no
    answer, load that was not all sent, a missing report page, or, in a run long enough to
    hold a whole second spike, a load phase after the first spike whose p99 was over the
    SLA. Empty when it passed."""
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
    v = s.get("after_first_spike") or {}
    if v.get("checked") and not v.get("held"):
        problems.append(f"p99 over the {s['sla_ms']:g} ms SLA after the first spike, in "
                        + ", ".join(v.get("phases_over_sla") or ["?"]))
    return problems


def sla_note(out: Path) -> str:
    """One line on the SLA verdict of a run, for the CLI."""
    try:
        v = json.loads((out / "summary.json").read_text()).get("after_first_spike") or {}
    except (OSError, ValueError):
        return ""
    if not v.get("checked"):
        return "SLA after the first spike: not judged (the run ends before a second spike)"
    return ("SLA after the first spike: held" if v.get("held") else
            "SLA after the first spike: over in " + ", ".join(v.get("phases_over_sla", [])))


def _html_report(log_path: Path, out: Path, label: str = "") -> Path | None:
    """`sair report`'s page for the demo's decision log, or None without matplotlib or
    before the first decision."""
    import importlib.util

    from sair_ray.report.html import write_report as write_html
    from sair_ray.report.records import LogError, load

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("no figures: matplotlib is not installed (pip install 'sair-ray[bench]')")
        return None
    try:
        return write_html(load(log_path), out, note=label)
    except (LogError, ValueError) as e:  # no log yet: the run ended before its first round
        log.warning("no figures: %s", e)
        return None

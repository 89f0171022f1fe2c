"""Sim-to-live fidelity: one profile, one workload, one fixed allocation schedule, run on
the simulator and on real Ray Serve with emulated compute (docs/emulation.md), compared
window by window.

    .venv/bin/python -m sair_ray.fidelity [--out runs/fidelity] [--duration 60] ...

Both sides see the *same requests*: `sair_ray.emulate.request_plan` draws the arrival
times and per-stage reference service times exactly as the `Simulation` does for the seed,
and the live load generator sends each request at its time carrying its reference times.
The schedule's changes (scale-up, CPU resize, scale-down) go to the simulator through
`Simulation.apply` and to Serve through `RayServeBackend.apply`, the path SAIR uses (the
external-scaler API for replicas, a config redeploy, i.e. a rolling restart, for CPU and
memory). Everything runs on the stretched time axis of `time_scale` (live seconds).

Per window: throughput, end-to-end p50 and p99 (live: as the client measured them, so the
proxy and every handle hop are included), and per stage the queue at the window's end
(live: requests that had reached the stage's router and not yet started on a replica,
from the ingress's per-request records) and the time-averaged number of serving replicas
(live: RUNNING replicas from the Serve REST API, sampled every `sample_s`).
`Tolerances` are the written-down limits; `compare` checks them on whole-run figures and
reports per-window differences.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray.emulate import (
    EMULATED,
    RequestPlan,
    request_plan,
    scale_profile,
    scaled_workload,
)
from sair_ray.profiles import Profile, load_profile
from sair_ray.types import Allocation, StageAllocation
from sair_ray.workloads import Workload, workload_from_dict

Changes = Mapping[str, Mapping[str, float]]   # stage -> {replicas/cpu_m/mem_mb/rate: value}


@dataclass(frozen=True)
class Scenario:
    """What both sides run. Times (`duration_s`, `window_s`, change times) are live seconds,
    i.e. already on the axis stretched by `time_scale`; the workload is in the profile's own
    units (its rates are divided by `time_scale`)."""

    profile: str = "image_classification"
    workload: Mapping[str, Any] = field(
        default_factory=lambda: {"kind": "poisson", "rate": 30.0})
    time_scale: float = 10.0
    cold_start_scale: float | None = 0.7
    duration_s: float = 60.0
    window_s: float = 10.0
    seed: int = 0
    # Serve's router retries a request every 25 ms doubling to 0.5 s while every replica is
    # at max_ongoing_requests, and is not woken when one frees (docs/emulation.md); None
    # keeps Serve's defaults, a number caps the back-off (RAY_SERVE_ROUTER_RETRY_*_S)
    router_max_backoff_s: float | None = 0.01
    initial: Changes = field(default_factory=lambda: {"preprocess": {"replicas": 3}})
    changes: tuple[tuple[float, Changes], ...] = (
        (4.0, {"preprocess": {"replicas": 2}}),             # scale-down: rho 0.6 -> 0.9
        (12.0, {"preprocess": {"replicas": 3}}),            # scale-up (cold start 7 s)
        (30.0, {"preprocess": {"cpu_m": 2000}}),            # CPU resize: rolling restart
    )

    def scaled_profile(self) -> Profile:
        return scale_profile(load_profile(self.profile), self.time_scale, self.cold_start_scale)

    def scaled_workload(self) -> Workload:
        return scaled_workload(workload_from_dict(dict(self.workload), "workload"),
                               self.time_scale)

    def schedule(self, profile: Profile) -> tuple[Allocation, list[tuple[float, Allocation]]]:
        """The initial allocation and, per change, the full allocation after it."""
        cur = _merge(profile.pipeline.initial_allocation(), self.initial)
        steps = []
        for t, ch in sorted(self.changes, key=lambda x: x[0]):
            cur = _merge(cur, ch)
            steps.append((float(t), cur))
        return _merge(profile.pipeline.initial_allocation(), self.initial), steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changes"] = [[t, dict(c)] for t, c in self.changes]
        return d


def _merge(alloc: Allocation, changes: Changes) -> dict[str, StageAllocation]:
    out = dict(alloc)
    for name, ch in changes.items():
        a = out[name]
        kw: dict[str, Any] = {k: (int(v) if k != "rate" else float(v)) for k, v in ch.items()}
        out[name] = replace(a, **kw)
    return out


@dataclass(frozen=True)
class Tolerances:
    """Sim-to-live limits, checked on whole-run figures over [`skip_s`, duration): the
    live run must match the simulator within these."""

    throughput_rel: float = 0.05     # completed requests per second
    p50_rel: float = 0.25            # end-to-end median
    p99_rel: float = 0.25            # end-to-end p99
    replicas_abs: float = 0.75       # time-averaged serving replicas, per stage
    queue_abs: float = 3.0           # mean over window ends of the queue, per stage ...
    queue_rel: float = 0.5           # ... or within this fraction, whichever is looser
    skip_s: float = 0.0


# -- per-window rows -------------------------------------------------------------------------
@dataclass
class StageRow:
    queue: float          # requests waiting at the window's end
    replicas: float       # time-averaged serving replicas
    p50_ms: float         # processing time
    p99_ms: float


@dataclass
class WindowRow:
    start: float
    end: float
    completed: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    stages: dict[str, StageRow]


@dataclass
class SideResult:
    side: str                          # "sim" | "live"
    windows: list[WindowRow]
    total: WindowRow                   # over [skip_s, duration)
    extra: dict[str, Any] = field(default_factory=dict)


def run_sim(sc: Scenario, skip_s: float = 0.0) -> SideResult:
    from sair_ray.sim import Simulation

    prof = sc.scaled_profile()
    init, steps = sc.schedule(prof)
    sim = Simulation(prof, sc.scaled_workload(), np.random.default_rng(sc.seed),
                     allocation=init, retain_s=None)
    for t, alloc in steps:
        sim.apply(alloc, t)
    sim.run_until(sc.duration_s + 1e-6)

    def row(a: float, b: float) -> WindowRow:
        w = sim.window(a, b)
        return WindowRow(a, b, w.completed, w.throughput_rps, w.p50_ms, w.p99_ms,
                         {s.name: StageRow(float(s.queue), s.serving_replicas, s.p50_ms,
                                           s.p99_ms) for s in w.stages})

    tot = sim.totals()
    return SideResult("sim", [row(a, b) for a, b in _windows(sc)],
                      row(skip_s, sc.duration_s),
                      {"arrivals": tot.arrivals, "drops": tot.drops, "errors": tot.errors})


def _windows(sc: Scenario) -> list[tuple[float, float]]:
    n = int(math.floor(sc.duration_s / sc.window_s + 1e-9))
    return [(i * sc.window_s, (i + 1) * sc.window_s) for i in range(n)]


# -- live -------------------------------------------------------------------------------------
class _NoMetrics:
    """The backend's metrics port, unused here (the schedule is fixed)."""

    def window(self, start: float, end: float) -> Any:
        raise RuntimeError("the fidelity run observes through the ingress records")


def _get_json(url: str, timeout: float = 60.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def run_live(sc: Scenario, *, dashboard: str, http_port: int, sample_s: float = 1.0,
             skip_s: float = 0.0, log: Any = None) -> SideResult:
    """Deploy the emulated app on the connected Ray (whose logical resources should be the
    profile's cluster: `sair_ray.emulate.emulated_ray`), drive the scenario's requests and
    schedule, and summarise like the simulator. Leaves the app deployed."""
    from sair_ray.backends.ray_serve import RayServeBackend, ServeAdmin
    from sair_ray.loadgen import LoadPlan, LoadRunner
    from serve_apps.emulated import emulated_config

    say = log or (lambda m: None)
    prof = sc.scaled_profile()
    base = load_profile(sc.profile)
    init, steps = sc.schedule(prof)
    app = prof.name
    admin = ServeAdmin(dashboard, timeout_s=180)
    def config(cold: bool) -> dict[str, Any]:
        return emulated_config(sc.profile, time_scale=sc.time_scale,
                               cold_start_scale=sc.cold_start_scale, http_port=http_port,
                               allocation=init, seed=sc.seed, cold_start=cold,
                               env=router_env(sc.router_max_backoff_s))

    t_dep = time.time()
    admin.deploy(config(False))   # initial replicas warm, as in the simulator
    _wait_running(admin, app, prof.pipeline.stage_names, init)
    admin.deploy(config(True))    # from now on replicas pay the cold start
    time.sleep(1.0)
    _wait_running(admin, app, prof.pipeline.stage_names, init)
    deploy_s = time.time() - t_dep
    say(f"live: {app} RUNNING after {deploy_s:.1f} s")
    backend = RayServeBackend(app, profile=prof, admin=admin, metrics=_NoMetrics())
    url = f"http://127.0.0.1:{http_port}/{app}"
    for i in range(3):  # warm the proxy and the handles' routers (not counted)
        _post(url, {"id": -1 - i, "refs": [0.0] * len(prof.models)})
    n_rec0 = len(_get_json(f"{url}?records=0")["records"])

    rp = request_plan(prof, sc.scaled_workload(), sc.duration_s, sc.seed)
    plan = LoadPlan(rp.times, duration_s=sc.duration_s)
    bodies = [json.dumps(rp.body(i)).encode() for i in range(len(rp))]
    runner = LoadRunner(url, plan, bodies.__getitem__, concurrency=10_000,
                        timeout_s=max(60.0, sc.duration_s))
    samples: list[tuple[float, dict[str, int]]] = []
    applied: list[dict[str, Any]] = []
    stop = threading.Event()
    t0_box: list[float] = []

    def sampler() -> None:
        while not stop.is_set():
            try:
                deps = admin.details()["applications"][app]["deployments"]
                samples.append((time.time(), {
                    n: sum(r.get("state") == "RUNNING" for r in deps[n].get("replicas", []))
                    for n in prof.pipeline.stage_names}))
            except Exception as e:  # a slow dashboard: skip the sample
                say(f"live: sample failed: {e}")
            stop.wait(sample_s)

    def scheduler() -> None:
        while not t0_box and not stop.is_set():
            time.sleep(0.01)
        for t, alloc in steps:
            if stop.wait(max(0.0, t0_box[0] + t - time.time())):
                return
            a0 = time.time()
            try:
                backend.apply(alloc, a0)
                err = ""
            except Exception as e:
                err = str(e)
            applied.append({"t": t, "called_at": a0 - t0_box[0],
                            "took_s": time.time() - a0, "error": err,
                            "errors": [x.to_dict() for x in backend.actuation_errors]})
            say(f"live: applied the change at t={t:g} s in {time.time() - a0:.2f} s {err}")

    threads = [threading.Thread(target=sampler, daemon=True),
               threading.Thread(target=scheduler, daemon=True)]
    for th in threads:
        th.start()
    t0_box.append(time.time())
    say(f"live: sending {len(rp)} requests over {sc.duration_s:g} s")
    try:
        results = asyncio.run(runner.run())
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=200)
    recs = _get_json(f"{url}?records={n_rec0}")["records"]
    sent = [r for r in results if math.isfinite(r.sent_s)]
    t0 = float(np.median([r.sent_at - r.sent_s for r in sent])) if sent else t0_box[0]
    live = _live_rows(sc, prof.pipeline.stage_names, results, recs, samples, t0, skip_s)
    live.extra.update({
        "deploy_s": deploy_s, "applied": applied,
        "statuses": {s: sum(r.status == s for r in results)
                     for s in {r.status for r in results}},
        "overheads": _overheads(results, recs, prof.pipeline.stage_names, rp),
        "replica_start": _replica_start(samples, init, steps, t0, prof),
        "base_cold_start_s": {s.name: m.cold_start_s for s, m in
                              zip(base.pipeline.stages, prof.models, strict=True)},
        "load1": os.getloadavg()[0],
        "send_delay_p99_ms": float(np.percentile(
            [r.send_delay_ms for r in sent], 99)) if sent else math.nan})
    return live


def router_env(max_backoff_s: float | None) -> dict[str, str]:
    """Env vars capping Serve's router retry back-off (read by the ingress replica, whose
    handles route to the stages); {} keeps Serve's defaults (25 ms doubling to 500 ms)."""
    if max_backoff_s is None:
        return {}
    return {"RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S": f"{min(0.025, max_backoff_s):g}",
            "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": f"{max_backoff_s:g}"}


def _post(url: str, body: Mapping[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


def _wait_running(admin: Any, app: str, stages: Sequence[str], alloc: Allocation,
                  timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            a = admin.details().get("applications", {}).get(app, {})
        except Exception:
            a = {}
        if a.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"{app} failed to deploy: {a.get('message')}")
        deps = a.get("deployments") or {}
        if a.get("status") == "RUNNING" and all(
                sum(r.get("state") == "RUNNING" for r in (deps.get(n) or {}).get("replicas", []))
                >= alloc[n].replicas for n in stages):
            return
        if time.time() > deadline:
            raise TimeoutError(f"{app} not running after {timeout_s:g} s ({a.get('status')})")
        time.sleep(0.5)


def _live_rows(sc: Scenario, stages: Sequence[str], results: Sequence[Any],
               recs: Sequence[Any], samples: Sequence[tuple[float, dict[str, int]]],
               t0: float, skip_s: float) -> SideResult:
    ok = [r for r in results if r.status == "ok"]
    done = np.array([r.sent_at - t0 + r.latency_ms / 1e3 for r in ok])
    lat = np.array([r.latency_ms for r in ok])
    # per stage: (enq, start, end) relative to t0, from the ingress records
    hops: dict[str, list[tuple[float, float, float]]] = {n: [] for n in stages}
    for rec in recs:
        for k, h in enumerate(rec[4]):
            hops[stages[k]].append((h[0] - t0, h[1] - t0, h[2] - t0))
    hop_arr = {n: np.array(v).reshape(-1, 3) for n, v in hops.items()}
    st = np.array([s[0] - t0 for s in samples])
    counts = {n: np.array([s[1][n] for s in samples], dtype=float) for n in stages}

    def row(a: float, b: float) -> WindowRow:
        m = (done >= a) & (done < b)
        p50, p99 = _pcts(lat[m])
        srows = {}
        for n in stages:
            h = hop_arr[n]
            q = float(np.sum((h[:, 0] <= b) & (h[:, 1] > b))) if len(h) else 0.0
            fin = (h[:, 2] >= a) & (h[:, 2] < b) if len(h) else np.zeros(0, bool)
            q50, q99 = _pcts((h[fin, 2] - h[fin, 1]) * 1e3) if len(h) else (0.0, 0.0)
            srows[n] = StageRow(q, _step_mean(st, counts[n], a, b), q50, q99)
        return WindowRow(a, b, int(m.sum()), float(m.sum()) / (b - a), p50, p99, srows)

    return SideResult("live", [row(a, b) for a, b in _windows(sc)], row(skip_s, sc.duration_s))


def _pcts(ms: np.ndarray) -> tuple[float, float]:
    if len(ms) == 0:
        return 0.0, 0.0
    p50, p99 = np.percentile(ms, [50, 99])
    return float(p50), float(p99)


def _step_mean(t: np.ndarray, v: np.ndarray, a: float, b: float) -> float:
    """Time average over [a, b) of a sampled step function (each sample holds until the
    next; the first also covers the time before it)."""
    if len(t) == 0:
        return math.nan
    grid = np.linspace(a, b, 101)[:-1] + (b - a) / 200
    idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
    return float(v[idx].mean())


def _overheads(results: Sequence[Any], recs: Sequence[Any], stages: Sequence[str],
               rp: RequestPlan) -> dict[str, Any]:
    """Where live time goes that the simulator does not model: the proxy (client latency
    minus the ingress's), each handle hop to a stage (enqueue to start on a replica; its
    lowest decile is the cost of a hop that found a replica free) and back (a stage's end
    to the next enqueue), and the dispatch gap (a replica idle while requests wait: the
    router's retry back-off)."""
    by_id = {int(r[0]): r for r in recs if r[2] is not None and int(r[0]) >= 0}
    proxy = [r.latency_ms - (by_id[r.index][2] - by_id[r.index][1]) * 1e3
             for r in results if r.status == "ok" and r.index in by_id]
    out: dict[str, Any] = {"proxy_ms_p50": _p(proxy, 50), "proxy_ms_p99": _p(proxy, 99)}
    for k, n in enumerate(stages):
        to_rep = [(h[4][k][1] - h[4][k][0]) * 1e3 for h in by_id.values() if len(h[4]) > k]
        back = [(h[4][k + 1][0] - h[4][k][2]) * 1e3 for h in by_id.values()
                if len(h[4]) > k + 1]
        # dispatch gap: a replica finished while requests were waiting for the stage; how
        # long until it started the next one (0 in the simulator's FIFO queue)
        per_rep: dict[str, list[tuple[float, float, float]]] = {}
        for h in by_id.values():
            if len(h[4]) > k:
                enq, start, end, rep = h[4][k][:4]
                per_rep.setdefault(rep, []).append((start, end, enq))
        gaps = []
        for hops in per_rep.values():
            hops.sort()
            for (_, e1, _), (s2, _, q2) in itertools.pairwise(hops):
                if q2 < e1:   # the next request was already waiting when this one ended
                    gaps.append((s2 - e1) * 1e3)
        out[n] = {"hop_ms_p10": _p(to_rep, 10), "hop_ms_p50": _p(to_rep, 50),
                  "return_ms_p50": _p(back, 50), "dispatch_gap_ms_mean":
                  float(np.mean(gaps)) if gaps else math.nan,
                  "dispatch_gap_ms_p99": _p(gaps, 99), "dispatch_gaps": len(gaps)}
    return out


# A live side whose proxy needs this long (typically 5-10 ms) measured a starved machine
# (other jobs on the cores the control plane shares), not Serve: its numbers say nothing
# about the model.
STARVED_PROXY_MS_P50 = 25.0


def starved(live: SideResult) -> str | None:
    """Why the live run's control plane was starved of CPU, or None."""
    proxy = live.extra.get("overheads", {}).get("proxy_ms_p50", math.nan)
    if math.isfinite(proxy) and proxy > STARVED_PROXY_MS_P50:
        return (f"the proxy took {proxy:.0f} ms per request (median; typically 5-10 ms): "
                f"the machine was overloaded (load average {live.extra.get('load1', '?')})")
    return None


def _p(x: Sequence[float], q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def _replica_start(samples: Sequence[tuple[float, dict[str, int]]], init: Allocation,
                   steps: Sequence[tuple[float, Allocation]], t0: float,
                   prof: Profile) -> list[dict[str, Any]]:
    """For each scale-up in the schedule: seconds until the stage had its new count of
    RUNNING replicas, against the model's cold start."""
    out = []
    prev = init
    for t, alloc in steps:
        for spec, model in zip(prof.pipeline.stages, prof.models, strict=True):
            n = spec.name
            if alloc[n].replicas > prev[n].replicas:
                ready = [s[0] - t0 for s in samples
                         if s[0] - t0 >= t and s[1][n] >= alloc[n].replicas]
                out.append({"t": t, "stage": n, "to": alloc[n].replicas,
                            "running_after_s": (ready[0] - t) if ready else math.nan,
                            "model_cold_start_s": model.cold_start_s})
        prev = alloc
    return out


# -- comparing --------------------------------------------------------------------------------
@dataclass
class Check:
    metric: str
    sim: float
    live: float
    limit: str
    ok: bool


def _rel_ok(sim: float, live: float, rel: float) -> bool:
    if sim == 0:
        return abs(live) <= rel
    return abs(live - sim) / abs(sim) <= rel


def compare(sim: SideResult, live: SideResult, tol: Tolerances | None = None) -> list[Check]:
    """Whole-run checks (over [skip_s, duration)) against `tol`."""
    tol = tol or Tolerances()
    s, v = sim.total, live.total
    checks = [
        Check("throughput_rps", s.throughput_rps, v.throughput_rps,
              f"within {tol.throughput_rel:.0%}", _rel_ok(s.throughput_rps, v.throughput_rps,
                                                          tol.throughput_rel)),
        Check("p50_ms", s.p50_ms, v.p50_ms, f"within {tol.p50_rel:.0%}",
              _rel_ok(s.p50_ms, v.p50_ms, tol.p50_rel)),
        Check("p99_ms", s.p99_ms, v.p99_ms, f"within {tol.p99_rel:.0%}",
              _rel_ok(s.p99_ms, v.p99_ms, tol.p99_rel)),
    ]
    win = [i for i, w in enumerate(sim.windows) if w.start >= tol.skip_s]
    for n in s.stages:
        rs = float(np.mean([sim.windows[i].stages[n].replicas for i in win]))
        rl = float(np.mean([live.windows[i].stages[n].replicas for i in win]))
        checks.append(Check(f"{n}.replicas", rs, rl, f"within {tol.replicas_abs:g}",
                            abs(rs - rl) <= tol.replicas_abs))
        qs = float(np.mean([sim.windows[i].stages[n].queue for i in win]))
        ql = float(np.mean([live.windows[i].stages[n].queue for i in win]))
        checks.append(Check(f"{n}.queue", qs, ql,
                            f"within {tol.queue_abs:g} or {tol.queue_rel:.0%}",
                            abs(qs - ql) <= max(tol.queue_abs, tol.queue_rel * abs(qs))))
    return checks


def window_table(sim: SideResult, live: SideResult) -> str:
    stages = list(sim.total.stages)
    head = ["window (s)", "thr sim", "thr live", "p50 sim", "p50 live", "p99 sim",
            "p99 live"]
    for n in stages:
        head += [f"{n} q sim", f"{n} q live", f"{n} rep sim", f"{n} rep live"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for ws, wl in zip(sim.windows, live.windows, strict=True):
        cells = [f"{ws.start:g}-{ws.end:g}", f"{ws.throughput_rps:.2f}",
                 f"{wl.throughput_rps:.2f}", f"{ws.p50_ms:.0f}", f"{wl.p50_ms:.0f}",
                 f"{ws.p99_ms:.0f}", f"{wl.p99_ms:.0f}"]
        for n in stages:
            a, b = ws.stages[n], wl.stages[n]
            cells += [f"{a.queue:.0f}", f"{b.queue:.0f}", f"{a.replicas:.2f}",
                      f"{b.replicas:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(sc: Scenario, sim: SideResult, live: SideResult, checks: Sequence[Check],
             command: str = "") -> str:
    lines = [f"# Sim-to-live fidelity ({EMULATED}): {sc.profile}", "",
             f"Scenario: {json.dumps(sc.to_dict())}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    why = starved(live)
    if why:
        lines += [f"**Not a fidelity result**: {why}.", ""]
    lines += ["| metric (whole run) | sim | live | tolerance | pass |", "|---|---:|---:|---|---|"]
    lines += [f"| {c.metric} | {c.sim:.2f} | {c.live:.2f} | {c.limit} | "
              f"{'yes' if c.ok else 'NO'} |" for c in checks]
    lines += ["", "Per window (throughput req/s, end-to-end ms, queue at the window's end, "
              "time-averaged serving replicas):", "", window_table(sim, live), "",
              "Live overheads and events:", "", "```",
              json.dumps(_clean(live.extra), indent=1), "```", ""]
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), 4) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def result_dict(sc: Scenario, sim: SideResult, live: SideResult,
                checks: Sequence[Check]) -> dict[str, Any]:
    return _clean({"label": EMULATED, "scenario": sc.to_dict(), "sim": asdict(sim),
                   "live": asdict(live), "checks": [asdict(c) for c in checks]})


# -- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from sair_ray.emulate import emulated_ray

    ap = argparse.ArgumentParser(description="sim-to-live fidelity on emulated compute")
    ap.add_argument("--profile", default=Scenario.profile)
    ap.add_argument("--time-scale", type=float, default=Scenario.time_scale)
    ap.add_argument("--cold-start-scale", type=float, default=Scenario.cold_start_scale)
    ap.add_argument("--rate", type=float, default=30.0,
                    help="Poisson rate in the profile's units (live: rate / time scale)")
    ap.add_argument("--duration", type=float, default=Scenario.duration_s)
    ap.add_argument("--window", type=float, default=Scenario.window_s)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--router-max-backoff", type=float, default=Scenario.router_max_backoff_s,
                    help="cap of Serve's router retry back-off, s; 0 = Serve's default")
    ap.add_argument("--http-port", type=int, default=8411)
    ap.add_argument("--dashboard-port", type=int, default=8477)
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    a = ap.parse_args(argv)
    sc = Scenario(profile=a.profile, workload={"kind": "poisson", "rate": a.rate},
                  time_scale=a.time_scale, cold_start_scale=a.cold_start_scale,
                  duration_s=a.duration, window_s=a.window, seed=a.seed,
                  router_max_backoff_s=a.router_max_backoff or None)
    if a.duration != Scenario.duration_s:  # keep the schedule's shape on another length
        f = a.duration / Scenario.duration_s
        sc = replace(sc, changes=tuple((t * f, c) for t, c in Scenario.changes))

    def say(m: str) -> None:
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {m}\n")
        sys.stderr.flush()

    sim = run_sim(sc)
    with emulated_ray(load_profile(sc.profile), dashboard_port=a.dashboard_port) as c:
        live = run_live(sc, dashboard=c.dashboard, http_port=a.http_port, log=say)
    checks = compare(sim, live)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m sair_ray.fidelity " + " ".join(argv if argv is not None else sys.argv[1:])
    (a.out / "fidelity.md").write_text(markdown(sc, sim, live, checks, cmd.strip()))
    (a.out / "fidelity.json").write_text(json.dumps(result_dict(sc, sim, live, checks),
                                                    indent=1))
    sys.stdout.write(markdown(sc, sim, live, checks, cmd.strip()))
    return 0 if all(c.ok for c in checks) else 1


__all__ = ["Check", "Scenario", "SideResult", "Tolerances", "WindowRow",
           "compare", "main", "markdown", "run_live", "run_sim", "starved"]

if __name__ == "__main__":
    sys.exit(main())

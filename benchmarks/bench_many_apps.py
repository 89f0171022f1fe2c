"""Many apps on one cluster: N tiny Serve apps on one private local Ray, a SAIR controller
attached to each, light load on all of them, and what that costs the cluster.

    .venv/bin/python benchmarks/bench_many_apps.py [--apps 20] [--minutes 5] [--interval 10]
        [--rate 0.5] [--policy sair-retrieval] [--sample-s 30] [--num-cpus 64]
        [--out docs/results/many-apps] [--quick]

What runs: a private Ray head (its own temp dir, dashboard on a free port, `--num-cpus`
logical CPUs: the replicas wait rather than compute), one Serve config with `--apps` copies
of the live tests' tiny pipeline (tests/live/fixtures/tiny_pipeline.py: Ingress -> pre ->
post, `pre` an asyncio sleep of 100 ms, one request at a time per replica; every replica
reports through `sair_ray.observe.StageMeter`, so each app also has its metrics actor)
deployed with `external_scaler_enabled`, named app00, app01, ..., and one SAIR controller
actor per app (`sair_ray.live.attach`, policy `--policy`, default `sair-retrieval`: no LLM;
with `sair` every controller asks the one shared llama.cpp server of
sair_ray/live/shared_lm.py). Every controller uses the same profile (tiny_pipeline.yaml
with CPU and memory pinned and at most 2 replicas per stage, so its moves are replica
counts) and the apps' StageMeter metrics (`pipeline.metrics: meter`), a round every
`--interval` s, every experience stored. Before the controllers attach, every app answers
one request (which starts its metrics actor). This driver then sends open-loop Poisson
load of `--rate` req/s to every app (one asyncio loop, plain HTTP) for the whole run.

Measured (all processes are children of this driver, so they are found by process tree,
never by name across the machine):

- per-round controller CPU over the measured window (from the second sample, after
  every controller's first round and its set-up, to the end): the loop thread's CPU time
  as the controller reports it (`cpu_s`: observe, retrieve, decide, validate, apply,
  save), and the whole actor process's CPU time (psutil: also Ray's core-worker threads
  and the status calls of this driver), each divided by the rounds in the window;
- RSS of every controller actor, and the RSS of the Ray processes on the head by role
  (GCS, raylet, dashboard and its agents, Serve controller, proxy, replicas, metrics
  actors, idle workers), their CPU over the same window, and the proportional set size (PSS,
  shared pages counted once) of everything together;
- rounds late: from each controller's decision log (decisions and `round_failed`
  records), a round is late when it started more than `--late-frac` (50 %) of the
  interval after it was due (due = the previous round's start + the interval; the first
  round: the loop's start + the interval), with the likely cause: the round before failed
  (the loop's backoff), overran the interval (the live loop's `RoundTimer` skips the slot
  rather than bursting), or neither (the loop's thread woke late: CPU starvation);
  and the wall time of each round's timed parts (observe, retrieve, decide, act);
- rounds failed (the controllers' `rounds_failed`), controller restarts (pid changes),
  requests sent / answered OK per app;
- the machine's load average at each sample (the development machine is shared).

Prints a Markdown table and writes `results.json` and `results.md` into `--out`. Exit
status 1 if a round failed, an app got no round, a controller restarted or more than
`--max-late-frac` of the rounds were late. `--quick`: 2 apps, 30 s, a round every 5 s,
samples every 10 s (tests/live/test_bench_many_apps.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import sair_ray, tests
    sys.path.insert(0, str(ROOT))

PROFILE = ROOT / "tests" / "live" / "fixtures" / "tiny_pipeline.yaml"
IMPORT_PATH = "tests.live.fixtures.tiny_pipeline:app"
DEPLOYMENTS = ("Ingress", "pre", "post")
# Ray processes on the head that are the cluster itself (not an app's or SAIR's)
SYSTEM_ROLES = ("gcs", "raylet", "dashboard", "agents", "monitor", "serve_controller",
                "proxy")
ROLES = SYSTEM_ROLES + ("sair_controllers", "metrics_actors", "replicas", "idle_workers",
                        "other")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_names(n: int) -> list[str]:
    return [f"app{i:02d}" for i in range(n)]


# -- the cluster's processes --------------------------------------------------------------
def role(cmdline: str) -> str:
    """Which part of the cluster a process (a child of this driver) is, by command line
    (Ray workers set theirs to `ray::<ActorClass>...`)."""
    if cmdline.startswith("ray::"):
        title = cmdline[5:]
        for prefix, r in (("ServeController", "serve_controller"), ("ProxyActor", "proxy"),
                          ("ControllerActor", "sair_controllers"),
                          ("MetricsAggregator", "metrics_actors"),
                          ("ServeReplica", "replicas"), ("IDLE", "idle_workers"),
                          ("DashboardAgent", "agents"), ("RuntimeEnvAgent", "agents")):
            if title.startswith(prefix):
                return r
        return "other"
    if "gcs_server" in cmdline:
        return "gcs"
    if "/raylet" in cmdline.split(" ")[0] or cmdline.startswith("raylet"):
        return "raylet"
    if "dashboard/agent.py" in cmdline or "runtime_env/agent" in cmdline:
        return "agents"
    if ("dashboard.py" in cmdline or cmdline.startswith("ray-dashboard-")
            or "multiprocessing.forkserver" in cmdline
            or "multiprocessing.resource_tracker" in cmdline):   # the dashboard's modules
        return "dashboard"
    if "log_monitor.py" in cmdline or "monitor.py" in cmdline:
        return "monitor"
    return "other"


@dataclass
class ProcInfo:
    pid: int
    role: str
    rss_mb: float
    pss_mb: float
    cpu_s: float
    name: str


def cluster_processes() -> list[ProcInfo]:
    """Every descendant of this driver (the private Ray's head processes and its workers)."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline()) or p.name()
            mem = p.memory_full_info()
            ct = p.cpu_times()
            out.append(ProcInfo(p.pid, role(cmd), mem.rss / 2**20,
                                getattr(mem, "pss", mem.rss) / 2**20,
                                ct.user + ct.system, cmd[:80]))
    return out


def by_role(procs: list[ProcInfo], attr: str) -> dict[str, float]:
    out = dict.fromkeys(ROLES, 0.0)
    for p in procs:
        out[p.role] += getattr(p, attr)
    return {k: round(v, 1) for k, v in out.items()}


# -- the apps -----------------------------------------------------------------------------
def serve_config(apps: list[str], http_port: int, pre_ms: float) -> dict[str, Any]:
    return {
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": a, "route_prefix": f"/{a}", "import_path": IMPORT_PATH,
            "external_scaler_enabled": True,
            "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT),
                                         "SAIR_TINY_PRE_MS": str(pre_ms)}},
            "deployments": [{"name": d, "num_replicas": 1} for d in DEPLOYMENTS]}
            for a in apps]}


def pinned_profile(path: Path) -> Path:
    """tiny_pipeline.yaml with CPU and memory pinned to the initial values, <= 2 replicas."""
    from sair_ray.profiles import replica_moves_only

    prof = replica_moves_only(yaml.safe_load(PROFILE.read_text()), replicas_max=2)
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


class OutOfMemory(RuntimeError):
    """The machine's available memory fell below the floor: the run is stopped."""


def check_memory(floor_gb: float) -> None:
    import psutil

    avail = psutil.virtual_memory().available / 2**30
    if avail < floor_gb:
        raise OutOfMemory(f"the machine's available memory fell to {avail:.1f} GiB (floor "
                          f"{floor_gb:g} GiB): stopping; try fewer --apps")


def wait_all_running(admin: Any, apps: list[str], timeout_s: float,
                     floor_gb: float = 0.0) -> float:
    t0 = time.time()
    while True:
        check_memory(floor_gb)
        got = admin.details().get("applications", {})
        status = {a: (got.get(a) or {}).get("status") for a in apps}
        if all(s == "RUNNING" for s in status.values()):
            return time.time() - t0
        bad = {a: (got.get(a) or {}).get("message", "")[:200] for a, s in status.items()
               if s == "DEPLOY_FAILED"}
        if bad:
            raise RuntimeError(f"deploy failed: {bad}")
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"not RUNNING after {timeout_s:g} s: "
                               f"{ {a: s for a, s in status.items() if s != 'RUNNING'} }")
        time.sleep(2)


def warm_up(base_url: str, apps: list[str], timeout_s: float) -> None:
    """One answered request per app, then its metrics actor up (StageMeter starts it on
    the first request), so that no controller's first round finds no metrics."""
    import urllib.request

    from sair_ray.observe import MetricsClient, MetricsUnavailable

    deadline = time.time() + timeout_s
    for a in apps:
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/{a}?x=1", timeout=30) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{a} did not answer within {timeout_s:g} s")
            time.sleep(1)
    for a in apps:
        while True:
            try:
                MetricsClient(a)
                break
            except MetricsUnavailable:
                if time.time() > deadline:
                    raise TimeoutError(f"no metrics actor for {a} within {timeout_s:g} s") \
                        from None
                time.sleep(1)


# -- load ---------------------------------------------------------------------------------
@dataclass
class AppLoad:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def drive(base_url: str, apps: list[str], rate: float, duration_s: float,
          loads: dict[str, AppLoad], stop: threading.Event, seed: int = 0) -> None:
    """Open-loop Poisson arrivals at `rate`/s for each app (one merged stream, each
    request to a random app) until `duration_s` or `stop`; waits for every answer."""
    import aiohttp

    rng = np.random.default_rng(seed)

    async def one(session: Any, app: str) -> None:
        rec = loads[app]
        t0 = time.perf_counter()
        try:
            async with session.get(f"{base_url}/{app}?x=1") as r:
                await r.read()
                if r.status == 200:
                    rec.ok += 1
                    rec.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    rec.errors[str(r.status)] = rec.errors.get(str(r.status), 0) + 1
        except Exception as e:
            k = type(e).__name__
            rec.errors[k] = rec.errors.get(k, 0) + 1
            if len(rec.error_examples) < 3:
                rec.error_examples.append(f"{time.strftime('%H:%M:%S')} {e!r}"[:300])

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            tasks, t, start = [], 0.0, time.time()
            total = rate * len(apps)
            while not stop.is_set():
                t += rng.exponential(1 / total)
                if t >= duration_s:
                    break
                await asyncio.sleep(max(0.0, start + t - time.time()))
                app = apps[int(rng.integers(len(apps)))]
                loads[app].sent += 1
                tasks.append(asyncio.create_task(one(session, app)))
            await asyncio.gather(*tasks)

    asyncio.run(main())


# -- rounds -------------------------------------------------------------------------------
def round_delays(times: list[float], attached_at: float, interval: float) -> list[float]:
    """Seconds each round started after it was due: due = the previous round's start +
    the interval (the first: the attach + the interval)."""
    out, prev = [], attached_at
    for t in sorted(times):
        out.append(t - prev - interval)
        prev = t
    return out


@dataclass
class Round:
    time: float
    ok: bool
    ms: float = math.nan      # the round's timed parts (observe .. act), successful ones
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""


def read_rounds(log: Path) -> list[Round]:
    """Every round of a controller's decision log (decisions and `round_failed` records),
    in time order."""
    from sair_ray.decision_log import DecisionLog

    out = []
    for rec in DecisionLog.read_all(log):
        if rec.get("kind") == "decision":
            t = {k: round(float(v), 1) for k, v in (rec.get("timings_ms") or {}).items()}
            out.append(Round(float(rec["time"]), True, round(sum(t.values()), 1), t))
        elif rec.get("kind") == "round_failed":
            out.append(Round(float(rec["time"]), False, error=str(rec.get("error"))[:300]))
    return sorted(out, key=lambda r: r.time)


def late_rounds(rounds: list[Round], started_at: float, interval: float,
                late_frac: float) -> tuple[list[float], list[dict[str, Any]]]:
    """Start delays of every round, and the late ones with the likely cause: the round
    before failed (the loop's backoff, by design), overran its slot (its timed parts took
    longer than the interval: the `RoundTimer` skips the slot), or neither (the loop's
    thread woke late: CPU starvation)."""
    delays = round_delays([r.time for r in rounds], started_at, interval)
    late = []
    for i, (r, d) in enumerate(zip(rounds, delays, strict=True)):
        if d <= late_frac * interval:
            continue
        prev = rounds[i - 1] if i else None
        cause = ("first round" if prev is None else "after a failed round" if not prev.ok
                 else "previous round overran" if prev.ms > 1000 * interval
                 else "woke late")
        late.append({"t": round(r.time - started_at, 1), "delay_s": round(d, 1),
                     "cause": cause, "previous_ms": prev.timings if prev else {}})
    return delays, late


@dataclass
class Sample:
    t_min: float
    rounds_ok: int
    rounds_failed: int
    ctl_rss_mean_mb: float
    ctl_rss_max_mb: float
    system_rss_mb: float          # GCS, raylet, dashboard + agents, monitors, Serve ctl, proxy
    replicas_rss_mb: float
    metrics_rss_mb: float
    all_pss_mb: float             # every process of the cluster, shared pages counted once
    processes: int
    sent: int
    ok: int
    load1: float
    avail_gb: float = math.nan    # the machine's available memory (shared with other work)
    rss_by_role: dict[str, float] = field(default_factory=dict)
    pss_by_role: dict[str, float] = field(default_factory=dict)
    cpu_by_role: dict[str, float] = field(default_factory=dict)


def pct(xs: list[float], q: float) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.percentile(xs, q)) if xs else math.nan


def run(apps_n: int = 20, minutes: float = 5.0, interval_s: float = 10.0, rate: float = 0.5,
        policy: str = "sair-retrieval", sample_s: float = 30.0, num_cpus: int = 64,
        late_frac: float = 0.5, pre_ms: float = 100.0, seed: int = 0,
        min_avail_gb: float = 2.0, workdir: Path | None = None) -> dict[str, Any]:
    import psutil
    import ray

    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.live import attach
    from sair_ray.live.actor import NAMESPACE
    from sair_ray.live.actor import actor_name as controller_name

    apps = app_names(apps_n)
    own_work = workdir is None    # a temp dir of ours: removed at the end
    work = Path(workdir or tempfile.mkdtemp(prefix="sair-many-"))
    work.mkdir(parents=True, exist_ok=True)
    # short: Ray's Unix sockets live under it (107-byte path limit)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sair-ma-", dir="/tmp"))
    opts = {"apps": apps_n, "minutes": minutes, "interval_s": interval_s, "rate": rate,
            "policy": policy, "sample_s": sample_s, "num_cpus": num_cpus,
            "late_frac": late_frac, "pre_ms": pre_ms, "seed": seed,
            "nproc": os.cpu_count(),
            "mem_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_at_start": os.getloadavg()}
    cfg = {"loop": {"decision_interval_s": interval_s,
                    "settle_s": min(5.0, interval_s / 2)},
           "reward": {"store_all": True}, "exploration": {"safe": True},
           # the apps run StageMeter; said explicitly, so that a controller whose first
           # round came before its app's metrics actor existed does not settle on Serve's
           # metrics instead ('auto' does)
           "pipeline": {"metrics": "meter"}}
    profile = pinned_profile(work / "profile.yaml")
    dash_port, http_port = free_port(), free_port()
    samples: list[Sample] = []
    loads = {a: AppLoad() for a in apps}
    handles: dict[str, Any] = {}
    timing: dict[str, float] = {}
    stop_load = threading.Event()
    load_thread = None
    say(f"starting Ray ({num_cpus} logical CPUs, temp dir {ray_tmp})")
    t_start = time.time()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=dash_port, _temp_dir=str(ray_tmp),
             log_to_driver=False, logging_level="ERROR")
    try:
        admin = ServeAdmin(f"127.0.0.1:{dash_port}", timeout_s=300)
        say(f"deploying {apps_n} apps ({len(DEPLOYMENTS)} deployments each) ...")
        t0 = time.time()
        admin.deploy(serve_config(apps, http_port, pre_ms))
        wait_all_running(admin, apps, 300 + 30 * apps_n, min_avail_gb)
        timing["deploy_s"] = round(time.time() - t0, 1)
        say(f"all {apps_n} apps RUNNING after {timing['deploy_s']} s; warming up ...")
        t0 = time.time()
        warm_up(f"http://127.0.0.1:{http_port}", apps, 120 + 10 * apps_n)
        timing["warmup_s"] = round(time.time() - t0, 1)
        say(f"every app answered and has its metrics actor after {timing['warmup_s']} s; "
            f"attaching SAIR ({policy}) ...")
        t0 = time.time()
        for a in apps:
            check_memory(min_avail_gb)
            handles[a] = attach(a, cfg, policy, profile=str(profile),
                                data_dir=work / "sair-data", timeout_s=300)
        timing["attach_s"] = round(time.time() - t0, 1)
        from ray.util.state import get_actor

        gcs = ray.get_runtime_context().gcs_address

        def pids() -> dict[str, int]:
            out = {}
            for a in apps:
                st = get_actor(ray.get_actor(controller_name(a), namespace=NAMESPACE)
                               ._actor_id.hex(), address=gcs)
                out[a] = int(st.pid) if st is not None and st.pid else 0
            return out

        ctl_pids = pids()
        say(f"{apps_n} controllers attached in {timing['attach_s']} s; load {rate:g} req/s "
            f"per app for {minutes:g} min, sampling every {sample_s:g} s")
        duration = minutes * 60.0
        load_thread = threading.Thread(
            target=drive, args=(f"http://127.0.0.1:{http_port}", apps, rate, duration,
                                loads, stop_load, seed), daemon=True)
        t_run = time.time()
        load_thread.start()
        offsets = [k * sample_s for k in range(int(duration // sample_s) + 1)
                   if k * sample_s < duration] + [duration]
        base = 1 if len(offsets) > 2 else 0
        first_cpu: dict[int, float] = {}
        first_thread: dict[str, float] = {}
        first_rounds: dict[str, int] = {}
        first_role_cpu: dict[str, float] = {}
        statuses: dict[str, dict[str, Any]] = {}
        started_at: dict[str, float] = {}
        t_first = time.time()
        for i, offset in enumerate(offsets):
            time.sleep(max(0.0, t_run + offset - time.time()))
            if i == len(offsets) - 1:
                load_thread.join(90)
            check_memory(min_avail_gb)
            statuses = {}
            for a, h in handles.items():
                statuses[a] = h.status()
                # when the controller's loop started (its RoundTimer's origin)
                started_at[a] = time.time() - statuses[a]["uptime_s"]
            procs = cluster_processes()
            by_pid = {p.pid: p for p in procs}
            ctl = [by_pid[ctl_pids[a]] for a in apps if ctl_pids[a] in by_pid]
            if i == base:   # the CPU window starts here, after every first round's setup
                first_cpu = {p.pid: p.cpu_s for p in ctl}
                first_thread = {a: s["cpu_s"] for a, s in statuses.items()}
                first_rounds = {a: s["rounds_ok"] + s["rounds_failed"]
                                for a, s in statuses.items()}
                first_role_cpu = by_role(procs, "cpu_s")
                t_first = time.time()
            rss = by_role(procs, "rss_mb")
            s = Sample(
                t_min=round((time.time() - t_run) / 60, 2),
                rounds_ok=sum(x["rounds_ok"] for x in statuses.values()),
                rounds_failed=sum(x["rounds_failed"] for x in statuses.values()),
                ctl_rss_mean_mb=round(statistics.mean(p.rss_mb for p in ctl), 1)
                if ctl else math.nan,
                ctl_rss_max_mb=round(max(p.rss_mb for p in ctl), 1) if ctl else math.nan,
                system_rss_mb=round(sum(rss[r] for r in SYSTEM_ROLES), 1),
                replicas_rss_mb=rss["replicas"], metrics_rss_mb=rss["metrics_actors"],
                all_pss_mb=round(sum(p.pss_mb for p in procs), 1), processes=len(procs),
                sent=sum(x.sent for x in loads.values()),
                ok=sum(x.ok for x in loads.values()),
                load1=round(os.getloadavg()[0], 2),
                avail_gb=round(psutil.virtual_memory().available / 2**30, 1), rss_by_role=rss,
                pss_by_role=by_role(procs, "pss_mb"),
                cpu_by_role=by_role(procs, "cpu_s"))
            samples.append(s)
            say(f"t={s.t_min} min rounds ok {s.rounds_ok} failed {s.rounds_failed} "
                f"controller RSS {s.ctl_rss_mean_mb}/{s.ctl_rss_max_mb} MB, system "
                f"{s.system_rss_mb} MB, all PSS {s.all_pss_mb} MB, {s.processes} processes, "
                f"sent {s.sent} ok {s.ok}, load {s.load1}")
        t_end = time.time()
        window = t_end - t_first
        end_pids = pids()
        procs = cluster_processes()
        by_pid = {p.pid: p for p in procs}

        # -- per app ----------------------------------------------------------------------
        from sair_ray.files import ControllerFiles, app_data_dir

        per_app = []
        delays_all: list[float] = []
        late_all: list[dict[str, Any]] = []
        round_ms: list[float] = []
        for a in apps:
            st = statuses[a]
            rounds = st["rounds_ok"] + st["rounds_failed"]
            log = ControllerFiles.in_dir(app_data_dir(a, work / "sair-data")).log
            logged = read_rounds(Path(log)) if log is not None else []
            delays, late = late_rounds(logged, started_at[a], interval_s, late_frac)
            delays_all += delays
            late_all += [{"app": a, **x} for x in late]
            round_ms += [r.ms for r in logged if r.ok]
            p = by_pid.get(ctl_pids[a])
            d_rounds = rounds - first_rounds.get(a, 0)
            proc_cpu = (p.cpu_s - first_cpu[p.pid]) if p is not None and p.pid in first_cpu \
                else math.nan
            lat = loads[a].latencies_ms
            per_app.append({
                "app": a, "rounds_ok": st["rounds_ok"], "rounds_failed": st["rounds_failed"],
                "rounds_logged": len(logged),
                "rounds_late": len(late),
                "max_delay_s": round(max(delays), 2) if delays else math.nan,
                "thread_cpu_ms_per_round":
                round(1000 * (st["cpu_s"] - first_thread.get(a, 0.0)) / d_rounds, 1)
                if d_rounds > 0 else math.nan,
                "process_cpu_ms_per_round": round(1000 * proc_cpu / d_rounds, 1)
                if d_rounds > 0 else math.nan,
                "decide_ms_per_round": round(st["decide_ms"] / st["rounds_ok"], 2)
                if st["rounds_ok"] else math.nan,
                # rounds whose policy call failed (an LLM late or down: fallback decided)
                "policy_failures": st["policy_failures"],
                "rss_mb": round(p.rss_mb, 1) if p is not None else math.nan,
                "memory": st["memory_size"], "restarted": end_pids[a] != ctl_pids[a],
                "last_error": st["last_error"],
                "sent": loads[a].sent, "ok": loads[a].ok, "errors": loads[a].errors,
                "error_examples": loads[a].error_examples,
                "p99_ms": round(pct(lat, 99), 0)})
        # -- summary ----------------------------------------------------------------------
        rounds_total = sum(r["rounds_ok"] + r["rounds_failed"] for r in per_app)
        late_total = sum(r["rounds_late"] for r in per_app)
        thread_ms = [r["thread_cpu_ms_per_round"] for r in per_app]
        proc_ms = [r["process_cpu_ms_per_round"] for r in per_app]
        ctl_cpu = sum(by_pid[ctl_pids[a]].cpu_s - first_cpu.get(ctl_pids[a], 0.0)
                      for a in apps if ctl_pids[a] in by_pid)
        role_cpu = by_role(procs, "cpu_s")
        cpu_window = {r: round(100 * (role_cpu[r] - first_role_cpu.get(r, 0.0)) / window, 1)
                      for r in ROLES}
        first, last = samples[0], samples[-1]
        lat_all = [x for ld in loads.values() for x in ld.latencies_ms]
        summary = {
            "apps": apps_n, "rounds": rounds_total,
            "rounds_ok": sum(r["rounds_ok"] for r in per_app),
            "rounds_failed": sum(r["rounds_failed"] for r in per_app),
            "rounds_late": late_total,
            "late_by_cause": {c: sum(x["cause"] == c for x in late_all)
                              for c in sorted({x["cause"] for x in late_all})},
            "late": late_all,
            "round_ms": {"p50": round(pct(round_ms, 50), 1), "p99": round(pct(round_ms, 99), 1),
                         "max": round(max(round_ms), 1) if round_ms else math.nan},
            "late_frac": round(late_total / rounds_total, 4) if rounds_total else math.nan,
            "expected_rounds_per_app": int(duration // interval_s),
            "min_rounds_per_app": min(r["rounds_ok"] for r in per_app),
            "start_delay_s": {"p50": round(pct(delays_all, 50), 2),
                              "p99": round(pct(delays_all, 99), 2),
                              "max": round(max(delays_all), 2) if delays_all else math.nan},
            "thread_cpu_ms_per_round": {"median": round(pct(thread_ms, 50), 1),
                                        "max": round(pct(thread_ms, 100), 1)},
            "process_cpu_ms_per_round": {"median": round(pct(proc_ms, 50), 1),
                                         "max": round(pct(proc_ms, 100), 1)},
            "policy_failures": sum(r["policy_failures"] for r in per_app),
            "decide_ms_per_round_median": round(pct(
                [r["decide_ms_per_round"] for r in per_app], 50), 2),
            "controllers_cpu_pct_of_one_core": round(100 * ctl_cpu / window, 1),
            "cpu_pct_of_one_core_by_role": cpu_window,
            "controller_rss_mb": {"mean": last.ctl_rss_mean_mb, "max": last.ctl_rss_max_mb,
                                  "growth_mean": round(last.ctl_rss_mean_mb
                                                       - first.ctl_rss_mean_mb, 1)},
            "system_rss_mb": {"first": first.system_rss_mb, "last": last.system_rss_mb},
            "rss_by_role_last_mb": last.rss_by_role,
            "all_pss_mb": {"first": first.all_pss_mb, "last": last.all_pss_mb},
            "processes": last.processes,
            "restarts": sum(r["restarted"] for r in per_app),
            "requests": sum(r["sent"] for r in per_app),
            "ok": sum(r["ok"] for r in per_app),
            "p50_ms": round(pct(lat_all, 50), 0), "p99_ms": round(pct(lat_all, 99), 0),
            "load_avg_end": os.getloadavg(),
            "load1_min_max": [min(s.load1 for s in samples), max(s.load1 for s in samples)],
            "window_s": round(window, 1), **timing,
            "total_s": round(t_end - t_start, 1)}
        return {"options": opts, "summary": summary, "per_app": per_app,
                "samples": [asdict(s) for s in samples],
                "processes": [asdict(p) for p in sorted(procs, key=lambda p: p.role)]}
    finally:
        stop_load.set()
        if load_thread is not None:
            load_thread.join(90)
        for h in handles.values():
            with contextlib.suppress(Exception):
                h.stop()
        with contextlib.suppress(Exception):
            from ray import serve

            serve.shutdown()
        ray.shutdown()
        for _ in range(3):   # a dying process may still write its last log lines
            shutil.rmtree(ray_tmp, ignore_errors=True)
            time.sleep(1)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def verdict(res: dict[str, Any], max_late_frac: float) -> list[str]:
    s, fails = res["summary"], []
    if s["rounds_failed"]:
        bad = {r["app"]: r["last_error"] for r in res["per_app"] if r["rounds_failed"]}
        fails.append(f"{s['rounds_failed']} rounds failed: {bad}")
    if s["min_rounds_per_app"] < 1:
        fails.append("an app got no round")
    if s["restarts"]:
        fails.append(f"{s['restarts']} controllers restarted")
    if not s["late_frac"] <= max_late_frac:
        fails.append(f"{s['rounds_late']} of {s['rounds']} rounds late "
                     f"(bound {max_late_frac:.0%})")
    return fails


def to_markdown(res: dict[str, Any]) -> str:
    s, o = res["summary"], res["options"]
    late_s = o["late_frac"] * o["interval_s"]
    rows = [
        ("apps attached (3 deployments + a metrics actor each)", s["apps"]),
        ("run", f"{o['minutes']:g} min, a round every {o['interval_s']:g} s, "
                f"{o['rate']:g} req/s per app, policy `{o['policy']}`"),
        ("rounds ok / failed", f"{s['rounds_ok']} / {s['rounds_failed']} "
                               f"(per app >= {s['min_rounds_per_app']}, "
                               f"{s['expected_rounds_per_app']} due)"),
        (f"rounds late (> {late_s:g} s after due)",
         f"{s['rounds_late']} ({100 * s['late_frac']:.1f} %)"
         + (": " + ", ".join(f"{n} {c}" for c, n in s["late_by_cause"].items())
            if s["late_by_cause"] else "")),
        ("round start delay p50 / p99 / max (s)",
         " / ".join(str(s["start_delay_s"][k]) for k in ("p50", "p99", "max"))),
        ("round's timed parts (observe .. act) p50 / p99 / max (ms)",
         " / ".join(str(s["round_ms"][k]) for k in ("p50", "p99", "max"))),
        ("controller CPU per round, loop thread (ms; median / max app)",
         f"{s['thread_cpu_ms_per_round']['median']} / {s['thread_cpu_ms_per_round']['max']}"),
        ("controller CPU per round, whole actor process (ms; median / max app)",
         f"{s['process_cpu_ms_per_round']['median']} / "
         f"{s['process_cpu_ms_per_round']['max']}"),
        ("time in the policy per round (ms, median app); rounds its call failed",
         f"{s['decide_ms_per_round_median']}; {s['policy_failures']}"),
        ("all controllers together (% of one core)", s["controllers_cpu_pct_of_one_core"]),
        ("controller RSS mean / max (MB; mean growth over the run)",
         f"{s['controller_rss_mb']['mean']} / {s['controller_rss_mb']['max']} "
         f"({s['controller_rss_mb']['growth_mean']:+g})"),
        ("head's Ray system processes RSS, start -> end (MB)",
         f"{s['system_rss_mb']['first']} -> {s['system_rss_mb']['last']}"),
        ("all cluster processes PSS, start -> end (MB)",
         f"{s['all_pss_mb']['first']} -> {s['all_pss_mb']['last']} "
         f"({s['processes']} processes)"),
        ("requests ok / sent; p50 / p99 (ms)",
         f"{s['ok']} / {s['requests']}; {s['p50_ms']:g} / {s['p99_ms']:g}"),
        ("load average (1 min) during the run, min / max",
         " / ".join(f"{x:g}" for x in s["load1_min_max"])),
    ]
    out = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    roles = s["rss_by_role_last_mb"]
    pss = res["samples"][-1]["pss_by_role"]
    cpu = s["cpu_pct_of_one_core_by_role"]
    out += ["", "| process role | RSS at end (MB) | PSS at end (MB) | CPU over the run "
            "(% of one core) |", "|---|---|---|---|"]
    out += [f"| {r} | {roles[r]:g} | {pss[r]:g} | {cpu[r]:g} |" for r in ROLES
            if roles[r] or cpu[r]]
    cols = ["t_min", "rounds_ok", "rounds_failed", "ctl_rss_mean_mb", "ctl_rss_max_mb",
            "system_rss_mb", "replicas_rss_mb", "metrics_rss_mb", "all_pss_mb", "sent", "ok",
            "load1", "avail_gb"]
    out += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(x[c]) for c in cols) + " |" for x in res["samples"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--apps", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=10.0, help="decision interval, s")
    ap.add_argument("--rate", type=float, default=0.5, help="Poisson req/s per app")
    ap.add_argument("--policy", default="sair-retrieval")
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--num-cpus", type=int, default=64, help="Ray's logical CPUs")
    ap.add_argument("--late-frac", type=float, default=0.5,
                    help="a round is late when it starts more than this fraction of the "
                         "interval after it was due")
    ap.add_argument("--max-late-frac", type=float, default=0.05,
                    help="fail when more than this fraction of the rounds is late")
    ap.add_argument("--min-avail-gb", type=float, default=2.0,
                    help="stop when the machine's available memory falls below this")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "many-apps")
    ap.add_argument("--quick", action="store_true",
                    help="2 apps, 30 s, a round every 5 s, samples every 10 s")
    a = ap.parse_args(argv)
    if a.quick:
        a.apps, a.minutes, a.interval, a.sample_s, a.rate = 2, 0.5, 5.0, 10.0, 2.0
    res = run(a.apps, a.minutes, a.interval, a.rate, a.policy, a.sample_s, a.num_cpus,
              a.late_frac, min_avail_gb=a.min_avail_gb)
    fails = verdict(res, a.max_late_frac)
    res["failures"] = fails
    md = to_markdown(res)
    print(md)
    for f in fails:
        print(f"FAIL: {f}")
    print("PASS" if not fails else "FAIL")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    cmd = "benchmarks/bench_many_apps.py " + " ".join(argv if argv is not None
                                                       else sys.argv[1:])
    (a.out / "results.md").write_text(
        f"# Many apps on one cluster\n\n`.venv/bin/python {cmd.strip()}`, "
        f"{res['options']['date']}, {res['options']['nproc']} cores, "
        f"{res['options']['mem_total_gb']} GiB, load average at the start "
        f"{' / '.join(f'{x:.2f}' for x in res['options']['load_at_start'])}\n\n{md}\n\n"
        + ("PASS\n" if not fails else "".join(f"FAIL: {f}\n" for f in fails)))
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())

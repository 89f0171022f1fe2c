"""Live autoscaling on real Ray Serve with emulated compute (docs/emulation.md): SAIR
(`sair-retrieval`) vs Ray Serve's autoscaler (its defaults, and with its delays set to
SAIR's cooldowns) vs the threshold rule, N seeds, all methods of a seed at the same time.

    .venv/bin/python benchmarks/bench_live.py [--profile image_classification]
        [--methods sair-retrieval,serve,serve-cooldowns,threshold] [--patterns burst,ramp]
        [--seeds 0,1,2] [--duration 900] [--time-scale 10] [--base R] [--spike R]
        [--out runs/bench-live] [--quick] [--twin]

One local Ray (`sair_ray.emulate.partitioned_ray`): a head node with the dashboard, Serve's
controller and its one HTTP proxy, and one logical node per (pattern, method) *arm*, each
shaped like the profile's cluster (its CPUs, GPUs and memory) and tagged with a resource
of its own, so every arm's emulated app (`serve_apps/emulated.py`, warm initial replicas)
lives on its own "cluster": Serve schedules, queues and leaves replicas pending there as on
the profile's cluster. Per seed, every arm's app is deployed, the controllers attached,
and all arms get their pattern's requests *at the same time* (`sair_ray.emulate.request_plan`:
the same arrival times and reference service times for every method of a pattern: common
random numbers), so the machine's noise falls on all methods alike; the Serve REST API is
sampled every `--sample-s`; then the apps (and controllers) are removed. The arms share the
proxy, Serve's controller and the machine's cores, as apps of one real cluster do.

- `sair-retrieval`, `threshold`: the app with `external_scaler_enabled`, the SAIR controller
  attached (`sair_ray.live.attach`) with that policy, Serve's own metrics
  (`pipeline.metrics: serve`), one round every `--interval` s, validator replicas_max
  `--max-replicas` (GPU stages: what the profile's cluster holds), cooldowns 15 s up / 60 s
  down, CPU/memory pinned to the profile's initial values (replica moves only, as for
  Serve's autoscaler).
- `serve`: Serve's autoscaler on every stage (`autoscaling_config`: min 1, max
  `--max-replicas`, Serve's defaults otherwise: target_ongoing_requests 2, upscale delay
  30 s, downscale delay 600 s, unless `--serve-upscale-delay/--serve-downscale-delay`).
- `serve-cooldowns`: the same with its delays set to SAIR's cooldowns (15 s up, 60 s down).

Load: `--patterns` of `burst` (`--base`, then `--spike` for `--spike-s` of every `--period`,
after `--phase`), `ramp` (`--base` to `--spike` over the run) and `poisson` (`--base`).
Rates are in the profile's units; by default they come from the profile's default workload
rate r as in `sair bench` (sair_ray/bench/grid.py): burst 0.6 r -> 2.5 r, ramp 0.3 r ->
1.5 r, poisson r, so a new profile needs no hand-picked rates.

Time scale: per-request service times are stretched by `--time-scale` and request rates
divided by it (2 cores cannot host 50 req/s of real routing); cold starts, decision
intervals, cooldowns and Serve's delays stay in real seconds (`--cold-start-scale 1`).
The threshold rule runs with the thresholds the simulator's sweep tuned for the profile
(`sair_ray.bench.tuned`; its defaults, 100 ms CPU / 200 ms GPU processing p99, for a
profile the sweep has not seen), times the time scale, as the SLA is.

Per run: client p50/p99, SLA attainment (the profile's SLA x time scale), replica-seconds,
CPU-seconds and effective cost (sair_ray.cost, from the sampled allocation) per 1000 ok
requests. Per pattern and method: means over seeds with 95 % confidence intervals
(Student t); per pattern, every method's p99 and replica-seconds as ratios to `serve`'s in
the same seed (paired), with their intervals, and whether SAIR met issue 16's target (at
equal or higher attainment, p99 <= 0.8x and replica-seconds <= 1.0x Serve's). Outputs in
--out: runs.json (rewritten after every seed), results.md. Everything is labelled
"emulated compute".

`--twin`: the same cells on the simulator instead (no Ray, seconds): the time-scaled profile,
the pattern's requests in live seconds, the SAIR and threshold arms' controller config and
settings; Serve's autoscaler as the simulator's transcription of its policy (`ray_serve`,
with the arm's delays, deciding every --interval s). Labelled "simulator twin".

`--quick` (the test's mode): one seed, burst only, 8 s of light load, 3 s SAIR rounds,
short Serve delays, cold starts x 0.02 (and no warm initial deployment); a smoke run, not a
result. Full runs (>= 15 min x 3 seeds) take about an hour per profile and pattern: see
docs/emulation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import sair_ray, serve_apps
    sys.path.insert(0, str(ROOT))

from sair_ray.bench.stats import mean_ci  # noqa: E402

METHODS = ("sair-retrieval", "serve", "serve-cooldowns", "threshold")
SERVE_METHODS = ("serve", "serve-cooldowns")
PATTERNS = ("burst", "ramp", "poisson")
REFERENCE = "serve"          # ratios are to this method's run of the same seed
COOLDOWN_UP_S, COOLDOWN_DOWN_S = 15.0, 60.0
# issue 16's target for SAIR against Serve's autoscaler, per cell
TARGET_P99_RATIO, TARGET_REPLICA_S_RATIO = 0.8, 1.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--profile", default="image_classification")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--patterns", default="burst,ramp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration", type=float, default=900.0, help="load per run, live s")
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--cold-start-scale", type=float, default=1.0)
    ap.add_argument("--base", type=float, default=None,
                    help="base / start rate, profile units (default: from the profile)")
    ap.add_argument("--spike", type=float, default=None,
                    help="spike / end rate, profile units (default: from the profile)")
    ap.add_argument("--period", type=float, default=300.0, help="burst period, live s")
    ap.add_argument("--spike-s", type=float, default=90.0, help="spike length, live s")
    ap.add_argument("--phase", type=float, default=60.0, help="base-rate s before the first spike")
    ap.add_argument("--max-replicas", type=int, default=8)
    ap.add_argument("--interval", type=float, default=15.0, help="SAIR decision interval, s")
    ap.add_argument("--serve-upscale-delay", type=float, default=None)
    ap.add_argument("--serve-downscale-delay", type=float, default=None)
    ap.add_argument("--router-max-backoff", type=float, default=0.0,
                    help="cap Serve's router retry back-off, s (0 = Serve's default)")
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-live")
    ap.add_argument("--http-port", type=int, default=8431)
    ap.add_argument("--dashboard-port", type=int, default=8488)
    ap.add_argument("--resume", action="store_true",
                    help="keep the seeds --out/runs.json already holds complete (every arm, "
                         "no error) and run only the others")
    ap.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    ap.add_argument("--twin", action="store_true",
                    help="run the same cells on the simulator instead (no Ray; seconds): "
                         "the live ranking's simulated counterpart")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="DIR",
                    help="print one table of every cell (profile x pattern) in these earlier "
                         "--out directories and exit; runs nothing")
    a = ap.parse_args(argv)
    if a.summary:
        return a
    a.warm_start = True
    if a.quick:
        a.seeds, a.duration, a.interval, a.patterns = "0", 8.0, 3.0, "burst"
        a.cold_start_scale, a.sample_s, a.warm_start = 0.02, 1.0, False
        a.base, a.spike, a.period, a.spike_s, a.phase = 6.0, 12.0, 6.0, 3.0, 2.0
        a.serve_upscale_delay = 2.0 if a.serve_upscale_delay is None else a.serve_upscale_delay
        a.serve_downscale_delay = (10.0 if a.serve_downscale_delay is None
                                   else a.serve_downscale_delay)
    a.method_list = _csv(a.methods)
    bad = sorted(set(a.method_list) - set(METHODS))
    if bad or not a.method_list:
        ap.error(f"unknown or no method(s) {bad}; choose from {list(METHODS)}")
    a.pattern_list = _csv(a.patterns)
    bad = sorted(set(a.pattern_list) - set(PATTERNS))
    if bad or not a.pattern_list:
        ap.error(f"unknown or no pattern(s) {bad}; choose from {list(PATTERNS)}")
    try:
        a.seed_list = [int(x) for x in _csv(a.seeds)]
    except ValueError:
        ap.error(f"--seeds takes integers separated by commas (got {a.seeds!r})")
    if not a.duration > 0 or not a.time_scale > 0 or a.max_replicas < 1:
        ap.error("--duration and --time-scale must be > 0 and --max-replicas >= 1")
    return a


# -- load -----------------------------------------------------------------------------------------
def rates(a: argparse.Namespace, pattern: str) -> tuple[float, float]:
    """(base, spike) in profile units: the options, else from the profile's default workload
    rate r with `sair bench`'s pattern factors."""
    from sair_ray.bench.grid import BURST_BASE, BURST_SPIKE, RAMP_FROM, RAMP_TO
    from sair_ray.profiles import load_profile

    lo, hi = {"burst": (BURST_BASE, BURST_SPIKE), "ramp": (RAMP_FROM, RAMP_TO),
              "poisson": (1.0, 1.0)}[pattern]
    if a.base is not None and a.spike is not None:
        return a.base, a.spike
    r = load_profile(a.profile).default_workload().mean_rate(0.0, a.duration)
    return (lo * r if a.base is None else a.base), (hi * r if a.spike is None else a.spike)


def workload(a: argparse.Namespace, pattern: str) -> Any:
    """The live workload of `pattern`: rates in profile units divided by the time scale,
    times in live seconds."""
    from sair_ray.workloads import Burst, Poisson, Ramp

    s = a.time_scale
    base, spike = rates(a, pattern)
    if pattern == "ramp":
        return Ramp(base / s, spike / s, a.duration)
    if pattern == "poisson":
        return Poisson(base / s)
    return Burst(base / s, spike / s, a.period, a.spike_s, phase_s=a.phase)


# -- the arms of a run ------------------------------------------------------------------------
# With a profile, RayServeBackend hands Serve's ingress deployment to ServeMetrics, which
# takes only a profile stage as its ingress: the controller's profile gets the ingress as a
# pinned first stage (`sair_ray.emulate.controller_profile`), which the emulated ingress
# then reserves (INGRESS_CPU_M millicores instead of 0).
INGRESS_CPU_M = 1


class Arm(NamedTuple):
    pattern: str
    method: str
    partition: int              # its logical node of the partitioned Ray

    def app(self, seed: int) -> str:
        return f"{self.pattern}-{self.method}-s{seed}".replace("_", "-")


def arms(a: argparse.Namespace) -> list[Arm]:
    pairs = [(p, m) for p in a.pattern_list for m in a.method_list]
    return [Arm(p, m, i) for i, (p, m) in enumerate(pairs)]


def sair_profile_file(a: argparse.Namespace, out: Path) -> Path:
    """The profile as the SAIR controller reads it (`controller_profile`: SLA
    time-scaled, replicas capped, CPU/memory pinned to the initial values, the pinned
    ingress stage); its `sim:` blocks are unused."""
    from sair_ray.emulate import controller_profile

    prof = controller_profile(a.profile, a.time_scale, replicas_max=a.max_replicas,
                              ingress_cpu_m=INGRESS_CPU_M)
    path = out / "sair-profile.yaml"
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


def controller_config(a: argparse.Namespace) -> dict[str, Any]:
    """The SAIR config of a controller attached to an arm (SAIR's and the threshold rule's):
    one round every --interval s, cooldowns 15 s up / 60 s down, replicas capped at
    --max-replicas, safe exploration, Serve's own metrics."""
    return {"loop": {"decision_interval_s": a.interval, "settle_s": min(5.0, a.interval / 3)},
            "validator": {"replicas_max": a.max_replicas, "cooldown_up_s": COOLDOWN_UP_S,
                          "cooldown_down_s": COOLDOWN_DOWN_S},
            "exploration": {"safe": True}, "pipeline": {"metrics": "serve"}}


def policy_params(method: str, a: argparse.Namespace) -> dict[str, float]:
    """The threshold rule's p99 thresholds: the sweep's for the profile (its own defaults
    where the sweep has none), stretched by the time scale like the SLA and the service
    times, so it reads the slowed app as it would the real one. SAIR takes none."""
    if method != "threshold":
        return {}
    from sair_ray.baselines.threshold import Threshold
    from sair_ray.bench.tuned import TUNED

    base = Threshold()
    tuned = TUNED.get(a.profile, {}).get("threshold", {})
    return {k: tuned.get(k, getattr(base, k)) * a.time_scale
            for k in ("cpu_p99_ms", "gpu_p99_ms")}


def serve_autoscaling(method: str, a: argparse.Namespace) -> dict[str, Any] | None:
    if method not in SERVE_METHODS:
        return None
    auto: dict[str, Any] = {"min_replicas": 1, "max_replicas": a.max_replicas}
    if method == "serve-cooldowns":
        auto.update(upscale_delay_s=COOLDOWN_UP_S, downscale_delay_s=COOLDOWN_DOWN_S)
    else:
        if a.serve_upscale_delay is not None:
            auto["upscale_delay_s"] = a.serve_upscale_delay
        if a.serve_downscale_delay is not None:
            auto["downscale_delay_s"] = a.serve_downscale_delay
    return auto


def serve_config(arm_list: list[Arm], seed: int, a: argparse.Namespace,
                 cold: bool) -> dict[str, Any]:
    """One declarative config with every arm's app, each pinned to its partition, behind
    the head's one proxy."""
    from sair_ray.emulate import pin_to_partition
    from sair_ray.fidelity import router_env
    from serve_apps.emulated import emulated_config

    apps = []
    for arm in arm_list:
        c = emulated_config(a.profile, time_scale=a.time_scale,
                            cold_start_scale=a.cold_start_scale, name=arm.app(seed),
                            http_port=a.http_port,
                            autoscaling=serve_autoscaling(arm.method, a), seed=seed,
                            cold_start=cold, env=router_env(a.router_max_backoff or None))
        ing = next(d for d in c["applications"][0]["deployments"] if d["name"] == "ingress")
        ing["ray_actor_options"] = {"num_cpus": INGRESS_CPU_M / 1000}  # see INGRESS_CPU_M
        apps += pin_to_partition(c, arm.partition)["applications"]
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": a.http_port}, "applications": apps}


# -- one seed: every arm at once ------------------------------------------------------------------
def wait_all_running(admin: Any, apps: list[str], stages: list[str], init: Any) -> None:
    from sair_ray.fidelity import _wait_running

    for app in apps:
        _wait_running(admin, app, stages, init)


def run_seed(seed: int, arm_list: list[Arm], a: argparse.Namespace, dashboard: str,
             out: Path) -> list[dict[str, Any]]:
    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.emulate import EMULATED, request_plan, scale_profile
    from sair_ray.loadgen import LoadPlan, LoadRunner
    from sair_ray.profiles import load_profile

    prof = scale_profile(load_profile(a.profile), a.time_scale, a.cold_start_scale)
    stages = list(prof.pipeline.stage_names)
    init = prof.pipeline.initial_allocation()
    apps = [arm.app(seed) for arm in arm_list]
    admin = ServeAdmin(dashboard, timeout_s=180)
    admin.deploy(serve_config(arm_list, seed, a, cold=not a.warm_start))
    wait_all_running(admin, apps, stages, init)
    if a.warm_start:  # initial replicas warm; those started from now on pay the cold start
        admin.deploy(serve_config(arm_list, seed, a, cold=True))
        time.sleep(1.0)
        wait_all_running(admin, apps, stages, init)
    recs = [{"method": arm.method, "pattern": arm.pattern, "seed": seed, "app": arm.app(seed),
             "label": EMULATED} for arm in arm_list]
    handles: dict[int, Any] = {}
    data_dirs: list[Path] = []
    samples: list[list[dict[str, Any]]] = [[] for _ in arm_list]
    nodes: list[set[str]] = [set() for _ in arm_list]   # where each arm's replicas ran
    stop = threading.Event()
    try:
        profile_file = sair_profile_file(a, out)
        for i, arm in enumerate(arm_list):
            if arm.method in SERVE_METHODS:
                continue
            from sair_ray.live import attach

            scfg = controller_config(a)
            data_dirs.append(Path(tempfile.mkdtemp(prefix=f"sair-{arm.app(seed)}-")))
            params = policy_params(arm.method, a)
            handles[i] = attach(arm.app(seed), scfg, arm.method, profile=str(profile_file),
                                data_dir=data_dirs[-1], dashboard_url=dashboard,
                                policy_params=params)
            recs[i]["sair_config"] = scfg
            if params:
                recs[i]["policy_params"] = params
        plans = {p: request_plan(prof, workload(a, p), a.duration, seed)
                 for p in a.pattern_list}
        runners = []
        for arm in arm_list:
            rp = plans[arm.pattern]
            bodies = [json.dumps(rp.body(j)).encode() for j in range(len(rp))]
            runners.append(LoadRunner(f"http://127.0.0.1:{a.http_port}/{arm.app(seed)}",
                                      LoadPlan(rp.times, duration_s=a.duration),
                                      bodies.__getitem__, concurrency=10_000,
                                      timeout_s=max(60.0, a.duration)))
        t0 = time.time()

        def sampler() -> None:
            next_say = 60.0
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    details = admin.details()["applications"]
                    t = time.time() - t0
                    for i, arm in enumerate(arm_list):
                        deps = details[arm.app(seed)]["deployments"]
                        nodes[i].update(r.get("node_id") for n in stages
                                        for r in deps[n]["replicas"] if r.get("node_id"))
                        samples[i].append({"t": t, "stages": {n: {
                            "running": sum(r.get("state") == "RUNNING"
                                           for r in deps[n]["replicas"]),
                            "target": int(deps[n].get("target_num_replicas") or 0),
                            "num_cpus": float((deps[n]["deployment_config"].get(
                                "ray_actor_options") or {}).get("num_cpus", 1.0))}
                            for n in stages}})
                    if t >= next_say:   # progress on long runs
                        next_say += 60.0
                        say(f"seed {seed}: {t:.0f} / {a.duration:g} s; running replicas "
                            + ", ".join(f"{arm.pattern}/{arm.method} "
                                        + "+".join(str(samples[i][-1]["stages"][n]["running"])
                                                   for n in stages)
                                        for i, arm in enumerate(arm_list)))
                stop.wait(a.sample_s)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        say(f"seed {seed}: {len(arm_list)} arms, "
            + ", ".join(f"{p} {len(rp)} requests" for p, rp in plans.items())
            + f" each, over {a.duration:g} s")

        async def run_all() -> list[Any]:
            return list(await asyncio.gather(*(r.run() for r in runners)))

        results = asyncio.run(run_all())
    finally:
        stop.set()
        for i, h in handles.items():
            with contextlib.suppress(Exception):
                st = h.status()
                recs[i]["sair_status"] = {k: st.get(k) for k in ("rounds_ok", "rounds_failed",
                                                                 "probes")}
                recs[i]["sair_decisions"] = h.decisions(last=1000)
            with contextlib.suppress(Exception):
                h.stop()
        with contextlib.suppress(Exception):
            admin.deploy({"http_options": {"host": "127.0.0.1", "port": a.http_port},
                          "applications": []})   # remove every app
        for d in data_dirs:
            shutil.rmtree(d, ignore_errors=True)   # a cold memory for every run
    for i, rec in enumerate(recs):
        rec.update(summarise(results[i], samples[i], prof, a), nodes=sorted(nodes[i]))
    return recs


def summarise(results: list[Any], samples: list[dict[str, Any]], prof: Any,
              a: argparse.Namespace) -> dict[str, Any]:
    from sair_ray.config import CostConfig
    from sair_ray.cost import CostModel

    ok = np.array([r.latency_ms for r in results if r.status == "ok"])
    sla = prof.pipeline.sla_ms
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    stages = list(prof.pipeline.stage_names)
    init = prof.pipeline.initial_allocation()
    cost = CostModel(prof.pipeline, CostConfig())
    rep_s = dict.fromkeys(stages, 0.0)
    cpu_s = 0.0
    usd = 0.0
    pts = [s for s in samples if s["t"] < a.duration]
    for i, s in enumerate(pts):
        lo = 0.0 if i == 0 else s["t"]
        hi = pts[i + 1]["t"] if i + 1 < len(pts) else a.duration
        dt = max(0.0, hi - lo)
        alloc = {}
        for n in stages:
            x = s["stages"][n]
            rep_s[n] += x["running"] * dt
            cpu_s += x["running"] * x["num_cpus"] * dt
            alloc[n] = type(init[n])(max(0, x["target"]), round(x["num_cpus"] * 1000),
                                     init[n].mem_mb, init[n].rate)
        usd += cost.rate(alloc, effective=True) * dt / 3600
    n_ok = len(ok)
    errors: dict[str, int] = {}   # what went wrong, by message (at most 5 kinds kept)
    for r in results:
        if r.status != "ok" and (r.error in errors or len(errors) < 5):
            errors[r.error] = errors.get(r.error, 0) + 1
    return {"counts": counts, "ok": n_ok, "errors": errors,
            "p50_ms": float(np.percentile(ok, 50)) if n_ok else math.nan,
            "p99_ms": float(np.percentile(ok, 99)) if n_ok else math.nan,
            "sla_ms": sla,
            "attainment": float(np.mean(ok <= sla)) * n_ok / max(1, len(results)),
            "replica_s": rep_s, "replica_s_total": sum(rep_s.values()), "cpu_s": cpu_s,
            "usd_effective": usd,
            "usd_per_1000_ok": usd / n_ok * 1000 if n_ok else math.nan,
            "samples": len(samples)}


# -- the simulator's twin of a cell ---------------------------------------------------------------
TWIN = "simulator twin"


def twin_profile(a: argparse.Namespace) -> Any:
    """The profile as the live cell runs it, for the simulator: replica moves only, replicas
    capped as the controller reads them, service times and SLA x the time scale, cold
    starts x the cold-start scale. The emulated app's ingress stage (`controller_profile`)
    is left out: the simulator's pipeline starts at the first stage."""
    from sair_ray.emulate import controller_profile, scale_profile
    from sair_ray.profiles.loader import profile_from_dict

    data = controller_profile(a.profile, 1.0, replicas_max=a.max_replicas)
    data["stages"] = [st for st in data["stages"] if st["name"] != "ingress"]
    return scale_profile(profile_from_dict(data, source=a.profile), a.time_scale,
                         a.cold_start_scale)


def run_twin_seed(seed: int, arm_list: list[Arm], a: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """Every arm of a seed on the simulator (`sair_ray.bench.grid.run_scenario`), with what
    the live arm has: the time-scaled profile, the pattern's workload in live seconds,
    SAIR's and the threshold rule's controller config and settings; Serve's autoscaler is
    the simulator's transcription of its policy (`ray_serve`, with the arm's delays),
    deciding every --interval s where real Serve decides continuously on a 30 s average."""
    from sair_ray import registry
    from sair_ray.bench.grid import PERMISSIVE_VALIDATOR, Scenario, run_scenario
    from sair_ray.config import SAIRConfig

    prof = twin_profile(a)
    cpu_m = {n: al.cpu_m for n, al in prof.pipeline.initial_allocation().items()}
    ctl = controller_config(a)
    del ctl["pipeline"]      # how a live controller reads metrics; the simulator has its own
    recs = []
    for arm in arm_list:
        wl = workload(a, arm.pattern)
        if arm.method in SERVE_METHODS:
            name, learns = "ray_serve", False
            params: dict[str, Any] = {k: v for k, v in
                                      (serve_autoscaling(arm.method, a) or {}).items()
                                      if k.endswith("_delay_s")}
            cfg = SAIRConfig.from_dict({"loop": ctl["loop"]}).replace(
                seed=seed, **PERMISSIVE_VALIDATOR)
        else:
            name, learns = arm.method, registry.get(arm.method).learns
            params = policy_params(arm.method, a)
            cfg = SAIRConfig.from_dict(ctl).replace(seed=seed, **{"memory.fsync": False})
        policy = registry.make_policy(name, cfg, pipeline=prof.pipeline, profile=prof,
                                      workload=wl, **params)
        sc = Scenario(app=prof.name, pattern=arm.pattern, seed=seed, method=name,
                      hours=a.duration / 3600.0)
        row = run_scenario(sc, prof, wl, cfg, policy, learn=learns)
        rep_s = {n: float(r) * a.duration for n, r in row["replicas_by_stage"].items()}
        recs.append({"method": arm.method, "pattern": arm.pattern, "seed": seed,
                     "label": TWIN, "policy_params": params, "ok": int(row["completed"]),
                     "counts": {"arrivals": int(row["arrivals"]),
                                "completed": int(row["completed"]),
                                "drops": int(row["drops"]), "errors": int(row["errors"])},
                     "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                     "sla_ms": prof.pipeline.sla_ms,
                     # completed within the SLA over every arrival, as live counts it
                     "attainment": row["sla_attainment"] * row["completed"]
                     / max(1, row["arrivals"]),
                     "replica_s": rep_s, "replica_s_total": sum(rep_s.values()),
                     "cpu_s": sum(v * cpu_m[n] / 1000.0 for n, v in rep_s.items()),
                     "usd_per_1000_ok": row["usd_per_1k_effective"]})
    return recs


# -- aggregation --------------------------------------------------------------------------------
METRICS = (("p50_ms", "p50 ms", 0), ("p99_ms", "p99 ms", 0), ("attainment", "SLA attainment", 3),
           ("replica_s_total", "replica-s", 0), ("cpu_s", "CPU-s", 0),
           ("usd_per_1000_ok", "$ / 1000 ok (effective)", 4))


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r


def aggregate(runs: list[dict[str, Any]], methods: list[str],
              patterns: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per pattern and method: means with 95 % intervals over seeds; with the reference
    method in the run, the paired ratios (p99, replica-s) and attainment differences to
    its run of the same seed."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in patterns:
        ref = {r["seed"]: r for r in runs if r.get("pattern") == p
               and r["method"] == REFERENCE and _ok(r)}
        out[p] = {}
        for m in methods:
            rs = [r for r in runs if r.get("pattern") == p and r["method"] == m and _ok(r)]
            row: dict[str, Any] = {"n": len(rs), **{k: mean_ci([float(r[k]) for r in rs])
                                                    for k, _, _ in METRICS}}
            paired = [(r, ref[r["seed"]]) for r in rs if r["seed"] in ref]
            row["n_paired"] = len(paired)
            row["p99_ratio"] = mean_ci([r["p99_ms"] / s["p99_ms"] for r, s in paired])
            row["replica_s_ratio"] = mean_ci([r["replica_s_total"] / s["replica_s_total"]
                                              for r, s in paired])
            row["attainment_diff"] = mean_ci([r["attainment"] - s["attainment"]
                                              for r, s in paired])
            out[p][m] = row
    return out


def _fmt(x: tuple[float, float], d: int) -> str:
    mu, h = x
    if not math.isfinite(mu):
        return "-"
    return f"{mu:.{d}f}" + (f" ± {h:.{d}f}" if math.isfinite(h) else "")


def meets_target(attainment_diff: float, p99_ratio: float, replica_s_ratio: float) -> bool:
    """Issue 16's target, SAIR against Serve's autoscaler: attainment at least Serve's,
    p99 <= 0.8x and replica-seconds <= 1.0x Serve's."""
    return (attainment_diff >= 0 and p99_ratio <= TARGET_P99_RATIO
            and replica_s_ratio <= TARGET_REPLICA_S_RATIO)


def target_met(row: dict[str, Any]) -> bool | None:
    """The target for one cell, on the means of the paired differences and ratios; None
    without pairs."""
    if not row["n_paired"]:
        return None
    return meets_target(row["attainment_diff"][0], row["p99_ratio"][0],
                        row["replica_s_ratio"][0])


def markdown(agg: dict[str, dict[str, dict[str, Any]]], a: argparse.Namespace,
             cmd: str) -> str:
    where = (f"the {len(arms(a))} arms of a seed (patterns x methods) ran at the same time, "
             f"each on its own logical node shaped like the profile's cluster, on one Ray on "
             f"{os.cpu_count()} cores.")
    if a.twin:
        where = ("every arm ran on the simulator with the live cell's time-scaled profile, "
                 "workload and controller settings; `serve` and `serve-cooldowns` are the "
                 "simulator's transcription of Serve's policy (`ray_serve`), deciding every "
                 f"{a.interval:g} s.")
    title = TWIN if a.twin else "Live autoscaling, emulated compute"
    lines = [f"# {title}: {a.profile}", "",
             f"Command: `{cmd}`", "",
             f"{a.duration:g} s of load per run; seeds {a.seeds}; time scale "
             f"{a.time_scale:g} (service times x {a.time_scale:g}, rates / "
             f"{a.time_scale:g}), cold-start scale {a.cold_start_scale:g}; " + where
             + (" QUICK smoke run: not a result." if a.quick else ""), ""]
    if "threshold" in a.method_list:
        t = policy_params("threshold", a)
        lines += [f"The threshold rule's processing-p99 thresholds: {t['cpu_p99_ms']:g} ms "
                  f"CPU, {t['gpu_p99_ms']:g} ms GPU (the simulator sweep's for the profile, "
                  f"x {a.time_scale:g}).", ""]
    for p, rows in agg.items():
        base, spike = rates(a, p)
        shape = {"burst": f"burst {base:g} -> {spike:g} req/s (profile units) for "
                          f"{a.spike_s:g} s of every {a.period:g} s, first after "
                          f"{a.phase:g} s",
                 "ramp": f"ramp {base:g} -> {spike:g} req/s (profile units)",
                 "poisson": f"Poisson {base:g} req/s (profile units)"}[p]
        lines += [f"## {p}", "", shape + ".", "",
                  "| method | runs | " + " | ".join(h for _, h, _ in METRICS) + " |",
                  "|---|---:|" + "---:|" * len(METRICS)]
        for m, row in rows.items():
            lines.append(f"| {m} | {row['n']} | "
                         + " | ".join(_fmt(row[k], d) for k, _, d in METRICS) + " |")
        if REFERENCE in rows:
            lines += ["", f"Paired with `{REFERENCE}` in the same seed:", "",
                      "| method | pairs | p99 ratio | replica-s ratio | attainment diff |",
                      "|---|---:|---:|---:|---:|"]
            for m, row in rows.items():
                if m == REFERENCE:
                    continue
                lines.append(f"| {m} | {row['n_paired']} | {_fmt(row['p99_ratio'], 2)} | "
                             f"{_fmt(row['replica_s_ratio'], 2)} | "
                             f"{_fmt(row['attainment_diff'], 3)} |")
            if "sair-retrieval" in rows:
                met = target_met(rows["sair-retrieval"])
                lines += ["", "Target (SAIR at equal or higher attainment, p99 <= "
                          f"{TARGET_P99_RATIO:g}x and replica-s <= {TARGET_REPLICA_S_RATIO:g}x "
                          f"Serve's, on the means): "
                          + {True: "**met**", False: "**missed**", None: "no pairs"}[met]
                          + "."]
        lines.append("")
    lines += ["± : half-width of the 95 % confidence interval over seeds (Student t).",
              f"Labelled: {TWIN} (no Ray: the simulator, the live cell's settings)." if a.twin
              else "Labelled: emulated compute (replicas wait out the profile's service "
                   "times; the control plane is real Ray Serve)."]
    return "\n".join(lines) + "\n"


def seed_targets(runs: list[dict[str, Any]], pattern: str) -> tuple[int, int]:
    """(seeds where SAIR met the target against Serve's run of the same seed, seeds with
    both runs)."""
    by = {(r["seed"], r["method"]): r for r in runs if r.get("pattern") == pattern and _ok(r)}
    met = n = 0
    for seed in sorted({s for s, _ in by}):
        sair, ref = by.get((seed, "sair-retrieval")), by.get((seed, REFERENCE))
        if sair is None or ref is None:
            continue
        n += 1
        met += meets_target(sair["attainment"] - ref["attainment"],
                            sair["p99_ms"] / ref["p99_ms"],
                            sair["replica_s_total"] / ref["replica_s_total"])
    return met, n


def summary(dirs: list[Path]) -> str:
    """One row per cell (profile x pattern) of earlier runs: SAIR's paired ratios to Serve's
    autoscaler and whether it met the target, on the means and per seed."""
    from sair_ray.profiles import load_profile

    lines = ["| profile | pattern | time scale | seeds | SAIR p99 / Serve's | "
             "SAIR replica-s / Serve's | attainment SAIR, Serve | target met: means | "
             "seeds |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    cells = met_cells = 0
    labels: set[str] = set()
    for d in dirs:
        runs_path, prof_path = d / "runs.json", d / "sair-profile.yaml"
        if not runs_path.is_file() or not prof_path.is_file():
            raise SystemExit(f"{d}: no runs.json and sair-profile.yaml there: not an --out "
                             "directory of this benchmark")
        runs = json.loads(runs_path.read_text())
        labels |= {r.get("label", "") for r in runs}
        ctl = yaml.safe_load(prof_path.read_text())
        scale = float(ctl["sla_ms"]) / load_profile(ctl["name"]).pipeline.sla_ms
        patterns = [p for p in PATTERNS if any(r.get("pattern") == p for r in runs)]
        for p, rows in aggregate(runs, [REFERENCE, "sair-retrieval"], patterns).items():
            sair, ref = rows["sair-retrieval"], rows[REFERENCE]
            met = target_met(sair)
            n_met, n = seed_targets(runs, p)
            cells += met is not None
            met_cells += bool(met)
            lines.append(
                f"| {ctl['name']} | {p} | {scale:g} | {sair['n_paired']} | "
                f"{_fmt(sair['p99_ratio'], 2)} | {_fmt(sair['replica_s_ratio'], 2)} | "
                f"{_fmt(sair['attainment'], 3)}, {_fmt(ref['attainment'], 3)} | "
                + {True: "**met**", False: "missed", None: "-"}[met]
                + f" | {n_met} of {n} |")
    lines += ["", f"Target (SAIR at equal or higher SLA attainment, p99 <= "
              f"{TARGET_P99_RATIO:g}x and replica-seconds <= {TARGET_REPLICA_S_RATIO:g}x "
              f"Serve's default autoscaler, paired by seed) met on the means in {met_cells} "
              f"of {cells} cells run. ± : half-width of the 95 % confidence interval over "
              "seeds (Student t)."
              + (" Emulated compute: replicas wait out the profile's service times; the "
                 "control plane is real Ray Serve." if labels - {TWIN} else "")
              + (f" {TWIN.capitalize()}: the simulator with the live cells' settings, Serve's "
                 "autoscaler as its transcription (`ray_serve`)." if TWIN in labels else "")]
    return "\n".join(lines) + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def kept_runs(path: Path, arm_list: list[Arm], seeds: list[int]) -> list[dict[str, Any]]:
    """The runs of `path` (an earlier runs.json) that --resume keeps: those of every seed in
    `seeds` whose arms are all there, each without an error."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    want = {(arm.pattern, arm.method) for arm in arm_list}
    keep: list[dict[str, Any]] = []
    for seed in seeds:
        rs = [r for r in old if r.get("seed") == seed
              and (r.get("pattern"), r.get("method")) in want]
        if len(rs) == len(want) and {(r["pattern"], r["method"]) for r in rs
                                     if _ok(r)} == want:
            keep += rs
    return keep


def main(argv: list[str] | None = None) -> int:
    from sair_ray.emulate import partitioned_ray
    from sair_ray.profiles import load_profile

    a = parse_args(argv)
    if a.summary:
        print(summary(a.summary), end="")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "benchmarks/bench_live.py " + " ".join(
        x for x in (sys.argv[1:] if argv is None else argv) if x != "--resume")
    arm_list = arms(a)
    if a.twin:
        return main_twin(a, arm_list, cmd.strip())
    runs = kept_runs(a.out / "runs.json", arm_list, a.seed_list) if a.resume else []
    todo = [s for s in a.seed_list if s not in {r["seed"] for r in runs}]
    if runs:
        say(f"--resume: keeping seed(s) {sorted({r['seed'] for r in runs})} from "
            f"{a.out / 'runs.json'}")
    say(f"{a.profile}: {len(arm_list)} arms ({', '.join(a.pattern_list)} x "
        f"{', '.join(a.method_list)}) x seeds {todo}, {a.duration:g} s each; "
        "emulated compute")
    with partitioned_ray(load_profile(a.profile), len(arm_list),
                         dashboard_port=a.dashboard_port) as c:
        for seed in todo:
            try:
                runs += run_seed(seed, arm_list, a, c.dashboard, a.out)
            except Exception as e:  # keep the other seeds; the failure is reported
                say(f"seed {seed} failed: {e!r}")
                runs += [{"method": arm.method, "pattern": arm.pattern, "seed": seed,
                          "error": repr(e)} for arm in arm_list]
            (a.out / "runs.json").write_text(json.dumps(_clean(runs), indent=1))
    agg = aggregate(runs, a.method_list, a.pattern_list)
    text = markdown(agg, a, cmd.strip())
    (a.out / "results.md").write_text(text)
    (a.out / "runs.json").write_text(json.dumps(_clean(runs), indent=1))
    print(text)
    return 0 if all(_ok(r) for r in runs) else 1


def main_twin(a: argparse.Namespace, arm_list: list[Arm], cmd: str) -> int:
    say(f"{a.profile}: {len(arm_list)} arms ({', '.join(a.pattern_list)} x "
        f"{', '.join(a.method_list)}) x seeds {a.seed_list}, {a.duration:g} s each; {TWIN}")
    sair_profile_file(a, a.out)   # the controller's profile: --summary reads its SLA scale
    runs: list[dict[str, Any]] = []
    for seed in a.seed_list:
        runs += run_twin_seed(seed, arm_list, a)
        say(f"seed {seed} done")
    (a.out / "runs.json").write_text(json.dumps(_clean(runs), indent=1))
    text = markdown(aggregate(runs, a.method_list, a.pattern_list), a, cmd)
    (a.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

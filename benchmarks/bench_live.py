"""Live autoscaling on real Ray Serve with emulated compute (docs/emulation.md): SAIR
(`sair-retrieval`) vs Ray Serve's default autoscaler vs the threshold rule, N seeds.

    .venv/bin/python benchmarks/bench_live.py [--profile image_classification]
        [--methods sair-retrieval,serve,threshold] [--seeds 0,1,2] [--duration 900]
        [--pattern burst|ramp|poisson] [--base 20] [--spike 60] [--time-scale 10]
        [--out runs/bench-live] [--quick]

Rates (`--base`, `--spike`) are in the profile's units (the defaults suit
image_classification: one 1-core preprocess replica serves ~17 req/s); choose them per
profile.

Every run (method x seed) deploys a fresh emulated app (`serve_apps/emulated.py`, its own
Serve application name, initial replicas warm) on one local Ray whose logical resources
are the profile's cluster (`sair_ray.emulate.emulated_ray`), sends the seed's requests
(`sair_ray.emulate.request_plan`: the same arrival times and reference service times for
every method: common random numbers), samples the Serve REST API every `--sample-s`, and
removes the app (and the SAIR controller) afterwards.

- `sair-retrieval`, `threshold`: the app with `external_scaler_enabled`, the SAIR controller
  attached (`sair_ray.live.attach`) with that policy, Serve's own metrics
  (`pipeline.metrics: serve`), one round every `--interval` s, validator replicas_max
  `--max-replicas`, cooldowns 15 s up / 60 s down, CPU/memory pinned to the profile's
  initial values (replica moves only, as for Serve's autoscaler).
- `serve`: Serve's default autoscaler on every stage (`autoscaling_config`: min 1, max
  `--max-replicas`, Serve's defaults otherwise: target_ongoing_requests 2, upscale delay
  30 s, downscale delay 600 s, unless `--serve-upscale-delay/--serve-downscale-delay`).

Time scale: per-request service times are stretched by `--time-scale` and request rates
divided by it (2 cores cannot host 50 req/s of real routing); cold starts, decision
intervals, cooldowns and Serve's delays stay in real seconds (`--cold-start-scale 1`).
The threshold rule runs with its live defaults (100 ms CPU / 200 ms GPU processing p99);
they are not time-scaled (`sair attach` passes no policy parameters).

Per run: client p50/p99, SLA attainment (the profile's SLA x time scale), replica-seconds,
CPU-seconds and effective cost (sair_ray.cost, from the sampled allocation) per 1000 ok
requests. Per method: means over seeds with 95 % confidence intervals (Student t).
Outputs in --out: runs.json, results.md. Everything is labelled "emulated compute".

`--quick` (the test's mode): one seed, 8 s of light burst load, 3 s SAIR rounds, short
Serve delays, cold starts x 0.02 (and no warm initial deployment); a smoke run, not a
result.
Full runs (>= 15 min x 3 seeds per cell) take hours: see docs/emulation.md for the command.
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
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import sair_ray, serve_apps
    sys.path.insert(0, str(ROOT))

from sair_ray.bench.stats import mean_ci  # noqa: E402

METHODS = ("sair-retrieval", "serve", "threshold")
COOLDOWN_UP_S, COOLDOWN_DOWN_S = 15.0, 60.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--profile", default="image_classification")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration", type=float, default=900.0, help="load per run, live s")
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--cold-start-scale", type=float, default=1.0)
    ap.add_argument("--pattern", choices=("burst", "ramp", "poisson"), default="burst")
    ap.add_argument("--base", type=float, default=20.0, help="burst base rate (profile units)")
    ap.add_argument("--spike", type=float, default=60.0, help="burst spike rate (profile units)")
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
    ap.add_argument("--dashboard", default=None,
                    help="use this running Ray's dashboard (host:port) instead of starting one")
    ap.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    a = ap.parse_args(argv)
    a.warm_start = True
    if a.quick:
        a.seeds, a.duration, a.interval = "0", 8.0, 3.0
        a.cold_start_scale, a.sample_s, a.warm_start = 0.02, 1.0, False
        a.base, a.spike, a.period, a.spike_s, a.phase = 6.0, 12.0, 6.0, 3.0, 2.0
        a.serve_upscale_delay = 2.0 if a.serve_upscale_delay is None else a.serve_upscale_delay
        a.serve_downscale_delay = (10.0 if a.serve_downscale_delay is None
                                   else a.serve_downscale_delay)
    a.method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = sorted(set(a.method_list) - set(METHODS))
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    return a


# -- one run ------------------------------------------------------------------------------------
def workload(a: argparse.Namespace) -> Any:
    """The live workload: rates in profile units divided by the time scale, times in live
    seconds. burst: `base`, `spike` for `spike_s` of every `period` (after `phase`); ramp:
    `base` to `spike` over the run; poisson: `base`."""
    from sair_ray.workloads import Burst, Poisson, Ramp

    s = a.time_scale
    if a.pattern == "ramp":
        return Ramp(a.base / s, a.spike / s, a.duration)
    if a.pattern == "poisson":
        return Poisson(a.base / s)
    return Burst(a.base / s, a.spike / s, a.period, a.spike_s, phase_s=a.phase)


# With a profile, RayServeBackend hands Serve's ingress deployment to ServeMetrics, which
# takes only a profile stage as its ingress: the controller's profile gets the ingress as a
# pinned first stage (`sair_ray.emulate.controller_profile`), which the emulated ingress
# then reserves (INGRESS_CPU_M millicores instead of 0).
INGRESS_CPU_M = 1


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


def run_one(method: str, seed: int, a: argparse.Namespace, dashboard: str,
            out: Path) -> dict[str, Any]:
    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.emulate import EMULATED, request_plan, scale_profile
    from sair_ray.fidelity import router_env
    from sair_ray.loadgen import LoadPlan, LoadRunner
    from sair_ray.profiles import load_profile
    from serve_apps.emulated import emulated_config

    base = load_profile(a.profile)
    prof = scale_profile(base, a.time_scale, a.cold_start_scale)
    stages = list(prof.pipeline.stage_names)
    app = f"emu-{method}-{seed}".replace("_", "-")
    admin = ServeAdmin(dashboard, timeout_s=180)
    autoscaling = None
    if method == "serve":
        autoscaling = {"min_replicas": 1, "max_replicas": a.max_replicas}
        if a.serve_upscale_delay is not None:
            autoscaling["upscale_delay_s"] = a.serve_upscale_delay
        if a.serve_downscale_delay is not None:
            autoscaling["downscale_delay_s"] = a.serve_downscale_delay
    rec: dict[str, Any] = {"method": method, "seed": seed, "app": app, "label": EMULATED}

    def cfg(cold: bool) -> dict[str, Any]:
        c = emulated_config(a.profile, time_scale=a.time_scale,
                            cold_start_scale=a.cold_start_scale, name=app,
                            http_port=a.http_port, autoscaling=autoscaling, seed=seed,
                            cold_start=cold, env=router_env(a.router_max_backoff or None))
        # INGRESS_CPU_M: see sair_profile_file
        ing = next(d for d in c["applications"][0]["deployments"] if d["name"] == "ingress")
        ing["ray_actor_options"] = {"num_cpus": INGRESS_CPU_M / 1000}
        return c

    from sair_ray.fidelity import _wait_running

    init = prof.pipeline.initial_allocation()
    admin.deploy(cfg(not a.warm_start))
    _wait_running(admin, app, stages, init)
    if a.warm_start:  # initial replicas warm; those started from now on pay the cold start
        admin.deploy(cfg(True))
        time.sleep(1.0)
        _wait_running(admin, app, stages, init)
    handle = None
    data_dir = Path(tempfile.mkdtemp(prefix=f"sair-{app}-"))
    if method != "serve":
        from sair_ray.live import attach

        scfg = {"loop": {"decision_interval_s": a.interval,
                         "settle_s": min(5.0, a.interval / 3)},
                "validator": {"replicas_max": a.max_replicas, "cooldown_up_s": COOLDOWN_UP_S,
                              "cooldown_down_s": COOLDOWN_DOWN_S},
                "exploration": {"safe": True}, "pipeline": {"metrics": "serve"}}
        handle = attach(app, scfg, method, profile=str(sair_profile_file(a, out)),
                        data_dir=data_dir, dashboard_url=dashboard)
        rec["sair_config"] = scfg
    rp = request_plan(prof, workload(a), a.duration, seed)
    url = f"http://127.0.0.1:{a.http_port}/{app}"
    bodies = [json.dumps(rp.body(i)).encode() for i in range(len(rp))]
    runner = LoadRunner(url, LoadPlan(rp.times, duration_s=a.duration), bodies.__getitem__,
                        concurrency=10_000, timeout_s=max(60.0, a.duration))
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    t0 = time.time()

    def sampler() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                deps = admin.details()["applications"][app]["deployments"]
                samples.append({"t": time.time() - t0, "stages": {n: {
                    "running": sum(r.get("state") == "RUNNING" for r in deps[n]["replicas"]),
                    "target": int(deps[n].get("target_num_replicas") or 0),
                    "num_cpus": float((deps[n]["deployment_config"].get("ray_actor_options")
                                       or {}).get("num_cpus", 1.0))} for n in stages}})
            stop.wait(a.sample_s)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    say(f"{app}: {len(rp)} requests over {a.duration:g} s")
    try:
        results = asyncio.run(runner.run())
    finally:
        stop.set()
        th.join(timeout=60)
        if handle is not None:
            with contextlib.suppress(Exception):
                st = handle.status()
                rec["sair_status"] = {k: st.get(k) for k in ("rounds_ok", "rounds_failed",
                                                             "probes")}
                rec["sair_decisions"] = handle.decisions(last=1000)
            with contextlib.suppress(Exception):
                handle.stop()
        with contextlib.suppress(Exception):
            admin.deploy({"http_options": {"host": "127.0.0.1", "port": a.http_port},
                          "applications": []})   # remove the app (every declarative app)
        shutil.rmtree(data_dir, ignore_errors=True)   # a cold memory for every run
    rec.update(summarise(results, samples, prof, a))
    return rec


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
    return {"counts": counts, "ok": n_ok,
            "p50_ms": float(np.percentile(ok, 50)) if n_ok else math.nan,
            "p99_ms": float(np.percentile(ok, 99)) if n_ok else math.nan,
            "sla_ms": sla,
            "attainment": float(np.mean(ok <= sla)) * n_ok / max(1, len(results)),
            "replica_s": rep_s, "replica_s_total": sum(rep_s.values()), "cpu_s": cpu_s,
            "usd_effective": usd,
            "usd_per_1000_ok": usd / n_ok * 1000 if n_ok else math.nan,
            "samples": len(samples)}


# -- aggregation --------------------------------------------------------------------------------
METRICS = (("p50_ms", "p50 ms", 0), ("p99_ms", "p99 ms", 0), ("attainment", "SLA attainment", 3),
           ("replica_s_total", "replica-s", 0), ("cpu_s", "CPU-s", 0),
           ("usd_per_1000_ok", "$ / 1000 ok (effective)", 4))


def aggregate(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m and "error" not in r]
        out[m] = {"n": len(rs), **{k: mean_ci([float(r[k]) for r in rs]) for k, _, _ in METRICS}}
    return out


def markdown(agg: dict[str, dict[str, Any]], a: argparse.Namespace, cmd: str) -> str:
    lines = [f"# Live autoscaling, emulated compute: {a.profile}", "",
             f"Command: `{cmd}`", "",
             f"{a.pattern} load {a.base:g} -> {a.spike:g} req/s (profile units; live / "
             f"{a.time_scale:g}), period {a.period:g} s, spikes {a.spike_s:g} s; "
             f"{a.duration:g} s per run; seeds {a.seeds}; time scale {a.time_scale:g}, "
             f"cold-start scale {a.cold_start_scale:g}; {os.cpu_count()} cores."
             + (" QUICK smoke run: not a result." if a.quick else ""), "",
             "| method | runs | " + " | ".join(h for _, h, _ in METRICS) + " |",
             "|---|---:|" + "---:|" * len(METRICS)]
    for m, row in agg.items():
        cells = []
        for k, _, d in METRICS:
            mu, h = row[k]
            cells.append("-" if not math.isfinite(mu) else
                         f"{mu:.{d}f}" + (f" ± {h:.{d}f}" if math.isfinite(h) else ""))
        lines.append(f"| {m} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", "± : half-width of the 95 % confidence interval over seeds (Student t)."]
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


def main(argv: list[str] | None = None) -> int:
    from sair_ray.emulate import emulated_ray
    from sair_ray.profiles import load_profile

    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "benchmarks/bench_live.py " + " ".join(sys.argv[1:] if argv is None else argv)
    runs: list[dict[str, Any]] = []

    def go(dashboard: str) -> None:
        for seed in a.seed_list:
            for m in a.method_list:
                say(f"run {m} seed {seed}")
                try:
                    runs.append(run_one(m, seed, a, dashboard, a.out))
                except Exception as e:  # keep the other runs; the failure is reported
                    say(f"run {m} seed {seed} failed: {e!r}")
                    runs.append({"method": m, "seed": seed, "error": repr(e)})
                (a.out / "runs.json").write_text(json.dumps(_clean(runs), indent=1))

    if a.dashboard:
        go(a.dashboard)
    else:
        with emulated_ray(load_profile(a.profile), dashboard_port=a.dashboard_port) as c:
            go(c.dashboard)
    agg = aggregate(runs, a.method_list)
    text = markdown(agg, a, cmd.strip())
    (a.out / "results.md").write_text(text)
    (a.out / "runs.json").write_text(json.dumps(_clean(runs), indent=1))
    print(text)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

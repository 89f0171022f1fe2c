"""Live side-by-side: SAIR against Ray Serve's own autoscaler on the
image_classification pipeline, same load, same replica limit.

    .venv/bin/python benchmarks/bench_live_vs_serve.py [--seconds 240] [--out DIR]
        [--pattern burst|ramp] [--max-replicas 4] [--seed 0] [--only A|B] ...

Two runs, each on its own private local Ray (`ray.init(address="local")`, dashboard on,
`--num-cpus` logical CPUs), torn down completely in between (SAIR controller stopped,
`serve.shutdown()`, metrics actor dropped, `ray.shutdown()`), so run B starts from a fresh
app and a cold SAIR memory:

A  "serve": the shipped serve config (serve_apps/configs/image_classification.yaml),
   rewritten in code: `external_scaler_enabled: false`, and on every stage deployment
   (preprocess, inference, postprocess) `num_replicas` replaced by Serve's
   `autoscaling_config` {min_replicas 1, max_replicas --max-replicas, target_ongoing_requests
   --target-ongoing (Serve's default 2), upscale_delay_s / downscale_delay_s
   --serve-upscale-delay / --serve-downscale-delay}. Serve's defaults for the delays are
   30 s / 600 s; by default they are set to SAIR's validator cooldowns (15 s / 60 s), so
   both scalers may react, and give back, at the same pace.
B  "sair": the shipped config as is (external scaler on, one replica per deployment), and
   SAIR attached through `sair_ray.live.attach` (the detached controller actor) with the
   `sair-retrieval` policy: SAIR's memory, retrieval, exploration (safe probes) and
   validator, with the LLM replaced by a fixed rule, so that llama.cpp does not take the
   2 cores the app needs. Validator: replicas_max --max-replicas, cooldowns 15 s up / 60 s
   down, one round every --interval s (15). By default (`--sair-resources pinned`) the
   profile pins CPU and memory per replica to their initial values, so SAIR moves replica
   counts only, the same action space as Serve's autoscaler (and no rolling restarts).

Both runs: the ingress stays at one replica (0 CPUs), replicas reserve no Ray memory
(builder arg `reserve_memory: false`) and run on CPU; after the app is RUNNING a few
warm-up requests (not counted) go through; then the same load plan (sair_ray.loadgen,
same pattern and seed: the same request times and bodies, 3200x2400 JPEGs so that
preprocessing is the heavy stage) is sent with bounded concurrency, every request's
status and latency recorded. Every --sample-s seconds the Serve REST API (the one SAIR
uses) is read for each stage's RUNNING replicas, target replicas and CPUs per replica.

Per run: requests sent / ok / failed, p50/p95/p99 end-to-end latency (client side, ok
requests), the share of ok requests over the profile's SLA, replica-seconds per stage
(RUNNING replicas integrated over the planned load window [0, --seconds], a step function
between samples; target replicas and reserved CPU-seconds too), scaling events seen in
the samples, the machine's load average, and for B SAIR's decisions. Written to --out:
results.json, report.md (the table with ratios B/A), requests_{A,B}.parquet,
timeline_{A,B}.csv, and SAIR's data dir for B. Ctrl-C stops the run in progress, keeps
what it recorded, cleans up and still writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import shutil
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import sair_ray, serve_apps
    sys.path.insert(0, str(ROOT))

APP = "image_classification"
SERVE_CONFIG = ROOT / "serve_apps" / "configs" / f"{APP}.yaml"
PROFILE = ROOT / "sair_ray" / "profiles" / f"{APP}.yaml"
RUNS = {"A": "Ray Serve autoscaler", "B": "SAIR (sair-retrieval)"}
SAIR_COOLDOWN_UP_S = 15.0
SAIR_COOLDOWN_DOWN_S = 60.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- configs ----------------------------------------------------------------------------------
def stage_names() -> list[str]:
    from sair_ray.profiles import load_profile

    return [s.name for s in load_profile(APP).pipeline.stages]


def base_config(http_port: int) -> dict[str, Any]:
    """The shipped serve config, on CPU, no memory reservations, HTTP on `http_port`."""
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app = _app(cfg)
    app["args"] = {**(app.get("args") or {}), "device": "cpu", "reserve_memory": False}
    return cfg


def _app(cfg: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in cfg["applications"] if a["name"] == APP)


def serve_autoscaling_config(cfg: dict[str, Any], stages: list[str], *, max_replicas: int,
                             target_ongoing: float, upscale_delay_s: float,
                             downscale_delay_s: float) -> dict[str, Any]:
    """Run A: `cfg` with the external scaler off and Serve's autoscaler on every stage
    deployment (the ingress keeps its fixed replica)."""
    out = copy.deepcopy(cfg)
    app = _app(out)
    app["external_scaler_enabled"] = False
    deps = {d["name"]: d for d in app.setdefault("deployments", [])}
    for name in stages:
        d = deps.get(name)
        if d is None:
            d = {"name": name}
            app["deployments"].append(d)
        d.pop("num_replicas", None)   # Serve refuses a fixed count with autoscaling_config
        d["autoscaling_config"] = {
            "min_replicas": 1, "initial_replicas": 1, "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing,
            "upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s}
    return out


def sair_config(max_replicas: int, interval_s: float) -> dict[str, Any]:
    return {"loop": {"decision_interval_s": interval_s, "settle_s": min(5.0, interval_s / 3)},
            "validator": {"replicas_max": max_replicas, "cooldown_up_s": SAIR_COOLDOWN_UP_S,
                          "cooldown_down_s": SAIR_COOLDOWN_DOWN_S},
            "exploration": {"safe": True}}


def sair_profile(path: Path, max_replicas: int, pin: bool) -> Path:
    """The shipped profile with replicas capped at `max_replicas`; with `pin`, CPU and
    memory per replica fixed at their initial values (replica moves only)."""
    prof = yaml.safe_load(PROFILE.read_text())
    for st in prof["stages"]:
        st["replicas_max"] = max_replicas
        if pin:
            init = st["initial"]
            st["cpu_m_min"] = st["cpu_m_max"] = init["cpu_m"]
            st["mem_mb_min"] = st["mem_mb_max"] = init["mem_mb"]
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


# -- sampling replica counts ------------------------------------------------------------------
@dataclass
class Sample:
    t: float                                  # seconds since the load started
    running: dict[str, int]
    target: dict[str, int]
    cpus: dict[str, float]                    # num_cpus per replica
    load1: float
    sent: int = 0
    ok: int = 0
    in_flight: int = 0
    queue: dict[str, int] = field(default_factory=dict)


class Sampler:
    def __init__(self, admin: Any, stages: list[str], t0: float) -> None:
        self.admin, self.stages, self.t0 = admin, stages, t0
        self.samples: list[Sample] = []
        self.metrics: Any = None
        self.errors = 0

    def sample(self, runner: Any = None) -> Sample | None:
        try:
            deps = self.admin.details()["applications"][APP]["deployments"]
        except Exception as e:  # a slow dashboard must not stop the run: skip this sample
            self.errors += 1
            say(f"sample failed: {e}")
            return None
        now = time.time()
        running, target, cpus = {}, {}, {}
        for name in self.stages:
            d = deps.get(name) or {}
            running[name] = sum(r.get("state") == "RUNNING" for r in d.get("replicas", []))
            target[name] = int(d.get("target_num_replicas") or 0)
            opts = (d.get("deployment_config") or {}).get("ray_actor_options") or {}
            cpus[name] = float(opts.get("num_cpus", 1.0))
        s = Sample(round(now - self.t0, 2), running, target, cpus, os.getloadavg()[0])
        if runner is not None:
            s.sent = sum(1 for r in runner.results if np.isfinite(r.sent_s))
            s.ok = sum(r.status == "ok" for r in runner.results)
            s.in_flight = runner.in_flight
        s.queue = self._queues(now)
        self.samples.append(s)
        return s

    def _queues(self, now: float) -> dict[str, int]:
        from sair_ray.observe import MetricsClient

        try:
            if self.metrics is None:
                self.metrics = MetricsClient(APP)
            w = self.metrics.window(now - 5.0, now)
            return {n: int(st.queue) for n, st in w.stages.items()}
        except Exception:
            return {}


def integrate(samples: list[Sample], key: str, stages: list[str], t_end: float,
              weight_cpus: bool = False) -> dict[str, float]:
    """Per stage, the integral over [0, t_end] of a sampled count (step function: each
    sample's value holds until the next; the first also covers the time before it)."""
    out = {n: 0.0 for n in stages}
    pts = sorted((s for s in samples if s.t < t_end), key=lambda s: s.t)
    if not pts:
        return {n: math.nan for n in stages}
    for i, s in enumerate(pts):
        a = 0.0 if i == 0 else s.t
        b = pts[i + 1].t if i + 1 < len(pts) else t_end
        for n in stages:
            v = getattr(s, key)[n] * (s.cpus[n] if weight_cpus else 1.0)
            out[n] += v * max(0.0, b - a)
    return out


def scale_events(samples: list[Sample], stages: list[str]) -> list[dict[str, Any]]:
    """Changes of target replicas between consecutive samples."""
    ev = []
    for prev, cur in zip(samples, samples[1:], strict=False):
        for n in stages:
            if cur.target[n] != prev.target[n]:
                ev.append({"t": cur.t, "stage": n, "from": prev.target[n], "to": cur.target[n]})
    return ev


# -- load -------------------------------------------------------------------------------------
def load_plan(a: argparse.Namespace) -> Any:
    from sair_ray.loadgen import build_plan
    from sair_ray.workloads import Burst, Ramp

    if a.pattern == "burst":
        # the first spike comes after `phase` s at the base rate (SAIR's first round and
        # Serve's first metrics precede it); shorter for a smoke run
        phase = min(a.phase, a.seconds / 4)
        wl = Burst(a.base, a.spike, a.period, a.spike_s, phase_s=phase)
    else:
        wl = Ramp(a.ramp_from, a.ramp_to, a.seconds)
    return build_plan(wl, a.seconds, seed=a.seed)


def image_bodies(width: int, height: int, variants: int = 4) -> Any:
    from serve_apps.payloads import image_request

    pool = [json.dumps(image_request(seed, width, height)).encode() for seed in range(variants)]
    return lambda i: pool[i % len(pool)]


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(a, q)) if a else math.nan


def request_stats(results: list[Any], sla_ms: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    ok = [r.latency_ms for r in results if r.status == "ok"]
    sent = sum(1 for r in results if r.status != "not_sent")
    failed = sum(counts.get(k, 0) for k in ("http_error", "timeout", "conn_error", "cancelled"))
    delays = [(r.sent_s - r.scheduled_s) * 1e3 for r in results if np.isfinite(r.sent_s)]
    return {"planned": len(results), "sent": sent, "ok": len(ok),
            "answered": counts.get("ok", 0) + counts.get("http_error", 0),
            "failed": failed, "counts": counts,
            "p50_ms": pct(ok, 50), "p95_ms": pct(ok, 95), "p99_ms": pct(ok, 99),
            "mean_ms": float(np.mean(ok)) if ok else math.nan,
            "max_ms": max(ok) if ok else math.nan,
            "over_sla_frac": (sum(x > sla_ms for x in ok) / len(ok)) if ok else math.nan,
            "send_delay_p99_ms": pct(delays, 99)}


# -- one run ----------------------------------------------------------------------------------
def wait_running(admin: Any, stages: list[str], timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            a = admin.details().get("applications", {}).get(APP, {})
        except Exception:
            a = {}
        if a.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"{APP} failed to deploy: {a.get('message')}")
        deps = a.get("deployments") or {}
        if a.get("status") == "RUNNING" and all(
                any(r.get("state") == "RUNNING" for r in (deps.get(n) or {}).get("replicas", []))
                for n in stages):
            return
        if time.time() > deadline:
            raise TimeoutError(f"{APP} not running after {timeout_s:g} s ({a.get('status')})")
        time.sleep(1)


def warm_up(url: str, body: bytes, n: int) -> None:
    for _ in range(n):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
        except Exception as e:
            say(f"warm-up request failed: {e}")


def run_one(kind: str, a: argparse.Namespace, out: Path, sla_ms: float) -> dict[str, Any]:
    """Deploy, (attach,) load, sample; always tear down. Returns the run's record, partial
    if interrupted (`interrupted: true`)."""
    import ray

    from sair_ray.backends.ray_serve import ServeAdmin, discover_dashboard_url
    from sair_ray.loadgen import LoadRunner, write_results

    stages = stage_names()
    rec: dict[str, Any] = {"run": kind, "name": RUNS[kind], "interrupted": False,
                           "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "load1_start": os.getloadavg()[0]}
    handle = None
    sampler: Sampler | None = None
    runner = None
    url = f"http://127.0.0.1:{a.http_port}/{APP}"
    say(f"run {kind} ({RUNS[kind]}): starting a local Ray ({a.num_cpus} logical CPUs) ...")
    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=a.dashboard_port,
             log_to_driver=False, logging_level="ERROR")
    try:
        admin = ServeAdmin(discover_dashboard_url(), timeout_s=180)
        cfg = base_config(a.http_port)
        if kind == "A":
            cfg = serve_autoscaling_config(
                cfg, stages, max_replicas=a.max_replicas, target_ongoing=a.target_ongoing,
                upscale_delay_s=a.serve_upscale_delay, downscale_delay_s=a.serve_downscale_delay)
        rec["serve_config"] = cfg
        say(f"run {kind}: deploying {APP} (external_scaler_enabled: "
            f"{_app(cfg).get('external_scaler_enabled')}) ...")
        admin.deploy(cfg)
        wait_running(admin, stages)
        bodies = image_bodies(*a.image_px)
        say(f"run {kind}: app RUNNING; {a.warmup_requests} warm-up requests ...")
        warm_up(url, bodies(0), a.warmup_requests)
        if kind == "B":
            from sair_ray.live import attach

            data_dir = out / "sair-data"
            if data_dir.exists():
                shutil.rmtree(data_dir)     # a cold memory: Serve's autoscaler has none
            prof = sair_profile(out / "sair-profile.yaml", a.max_replicas,
                                a.sair_resources == "pinned")
            scfg = sair_config(a.max_replicas, a.interval)
            rec["sair"] = {"policy": "sair-retrieval", "config": scfg,
                           "resources": a.sair_resources, "profile": str(prof)}
            say(f"run {kind}: attaching SAIR (sair-retrieval, round every {a.interval:g} s, "
                f"<= {a.max_replicas} replicas/stage) ...")
            handle = attach(APP, scfg, "sair-retrieval", profile=str(prof), data_dir=data_dir)
        plan = load_plan(a)
        runner = LoadRunner(url, plan, bodies, concurrency=a.concurrency, timeout_s=a.timeout)
        t0 = time.time()
        rec["load_t0"] = t0
        sampler = Sampler(admin, stages, t0)
        sampler.sample()
        say(f"run {kind}: {len(plan)} requests over {a.seconds:g} s ({a.pattern}); "
            "Ctrl-C stops and keeps what was recorded")

        async def drive() -> None:
            task = asyncio.create_task(runner.run())
            last_print = 0.0
            while not task.done():
                await asyncio.wait({task}, timeout=a.sample_s)
                s = await asyncio.to_thread(sampler.sample, runner)
                if s is not None and (s.t - last_print >= a.progress_s or task.done()):
                    last_print = s.t
                    reps = " ".join(f"{n} {s.running[n]}/{s.target[n]}" for n in stages)
                    q = s.queue.get(stages[0], "-")
                    say(f"run {kind}: t {s.t:4.0f}/{a.seconds:g} s  sent {s.sent} ok {s.ok} "
                        f"in flight {s.in_flight}  replicas run/target: {reps}  "
                        f"{stages[0]} queue {q}  load {s.load1:.2f}")
            await task

        try:
            asyncio.run(drive())
        except KeyboardInterrupt:
            rec["interrupted"] = True
            say(f"run {kind}: interrupted; keeping what was recorded")
        rec["load_wall_s"] = time.time() - t0
        if handle is not None:
            try:
                rec["sair_status"] = _jsonable(handle.status())
                rec["sair_decisions"] = _jsonable(handle.decisions(last=10_000))
            except Exception as e:
                rec["sair_error"] = str(e)
        return rec
    finally:
        if runner is not None:
            write_results(runner.results, out / f"requests_{kind}.parquet")
            rec["requests"] = request_stats(runner.results, sla_ms)
        if sampler is not None:
            t_end = min(a.seconds, sampler.samples[-1].t) if rec["interrupted"] else a.seconds
            rec["window_s"] = t_end
            rec["samples"] = [asdict(s) for s in sampler.samples]
            rec["sample_errors"] = sampler.errors
            rec["replica_s"] = integrate(sampler.samples, "running", stages, t_end)
            rec["target_replica_s"] = integrate(sampler.samples, "target", stages, t_end)
            rec["cpu_s"] = integrate(sampler.samples, "running", stages, t_end, True)
            rec["max_running"] = {n: max(s.running[n] for s in sampler.samples) for n in stages}
            rec["scale_events"] = scale_events(sampler.samples, stages)
            in_win = [s.load1 for s in sampler.samples if s.t <= t_end]
            rec["load1_mean"] = float(np.mean(in_win)) if in_win else math.nan
            write_timeline(sampler.samples, stages, out / f"timeline_{kind}.csv")
        say(f"run {kind}: shutting down (SAIR controller, Serve, Ray) ...")
        if handle is not None:
            try:
                handle.stop()
            except Exception as e:
                say(f"stopping the SAIR controller failed: {e}")
        try:
            from ray import serve

            from sair_ray.observe import drop_aggregator

            serve.shutdown()
            drop_aggregator(APP)
        except Exception as e:
            say(f"serve shutdown failed: {e}")
        finally:
            ray.shutdown()


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def write_timeline(samples: list[Sample], stages: list[str], path: Path) -> None:
    cols = ["t_s", "sent", "ok", "in_flight", "load1"] + [
        f"{n}_{k}" for n in stages for k in ("running", "target", "queue")]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for s in samples:
            row = [f"{s.t:.1f}", str(s.sent), str(s.ok), str(s.in_flight), f"{s.load1:.2f}"]
            for n in stages:
                row += [str(s.running[n]), str(s.target[n]), str(s.queue.get(n, ""))]
            f.write(",".join(row) + "\n")


# -- report -----------------------------------------------------------------------------------
def _ratio(b: float, a: float) -> float:
    return b / a if a and math.isfinite(a) and math.isfinite(b) else math.nan


def _f(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}".replace(",", " ")
    return str(x)


def comparison_rows(runs: dict[str, dict[str, Any]], stages: list[str], sla_ms: float
                    ) -> list[tuple[str, str, str, str]]:
    """(measure, A, B, B/A) rows for the runs present."""
    A, B = runs.get("A", {}), runs.get("B", {})

    def val(r: dict[str, Any], *path: str) -> Any:
        for p in path:
            if not isinstance(r, dict) or p not in r:
                return None
            r = r[p]
        return r

    rows = []

    def add(label: str, path: tuple[str, ...], digits: int = 0, ratio: bool = False) -> None:
        va, vb = val(A, *path), val(B, *path)
        r = _f(_ratio(vb, va), 2) if ratio and va is not None and vb is not None else ""
        rows.append((label, _f(va, digits), _f(vb, digits), r))

    add("requests planned", ("requests", "planned"))
    add("requests sent", ("requests", "sent"))
    add("answered ok", ("requests", "ok"))
    add("failed (HTTP error, timeout, conn. error, cancelled)", ("requests", "failed"))
    add("p50 latency ms", ("requests", "p50_ms"), ratio=True)
    add("p95 latency ms", ("requests", "p95_ms"), ratio=True)
    add("p99 latency ms", ("requests", "p99_ms"), ratio=True)
    add(f"share of ok requests over the SLA ({sla_ms:g} ms)", ("requests", "over_sla_frac"),
        3, ratio=True)
    for n in stages:
        add(f"replica-s {n}", ("replica_s", n), ratio=True)
    for r in (A, B):
        if "replica_s" in r:
            r["replica_s_total"] = sum(r["replica_s"].values())
            r["cpu_s_total"] = sum(r["cpu_s"].values())
            r["n_scale_events"] = len(r.get("scale_events", []))
    add("replica-s, all stages", ("replica_s_total",), ratio=True)
    add("reserved CPU-s (logical), all stages", ("cpu_s_total",), ratio=True)
    for n in stages:
        add(f"most replicas RUNNING, {n}", ("max_running", n))
    add("replica target changes", ("n_scale_events",))
    add("load average (1 min), mean over the run", ("load1_mean",), 2)
    return rows


def markdown(result: dict[str, Any]) -> str:
    runs, o = result["runs"], result["options"]
    stages = result["stages"]
    rows = comparison_rows(runs, stages, result["sla_ms"])
    lines = [f"# SAIR vs Ray Serve's autoscaler, live: {APP}", "",
             f"Date {result['date']}, {o['seconds']:g} s of {o['pattern']} load per run "
             f"({_load_text(o)}), seed {o['seed']}, concurrency <= {o['concurrency']}, "
             f"max {o['max_replicas']} replicas per stage in both runs; "
             f"{os.cpu_count()} cores, load average at start "
             f"{result.get('load_at_start', '?')}.", "",
             "| measure | A: Serve autoscaler | B: SAIR (sair-retrieval) | B/A |",
             "|---|---:|---:|---:|"]
    lines += [f"| {m} | {va} | {vb} | {r} |" for m, va, vb, r in rows]
    lines += ["", "Replica-seconds: RUNNING replicas integrated over the planned load window "
              f"(sampled every {o['sample_s']:g} s from the Serve REST API).", ""]
    for k in ("A", "B"):
        r = runs.get(k)
        if not r:
            continue
        if r.get("interrupted"):
            lines.append(f"Run {k} was interrupted: partial numbers.")
        ev = r.get("scale_events", [])
        lines += [f"## Run {k}: {RUNS[k]}: replica target changes", ""]
        lines += [f"- t {e['t']:.0f} s: {e['stage']} {e['from']} -> {e['to']}" for e in ev] \
            or ["- none"]
        lines.append("")
    b = runs.get("B") or {}
    if b.get("sair_decisions") is not None:
        st = b.get("sair_status") or {}
        lines += ["## SAIR decisions (run B)", "",
                  f"{st.get('rounds_ok', 0)} rounds ok, {st.get('rounds_failed', 0)} failed, "
                  f"{st.get('probes', 0)} probes, controller CPU "
                  f"{100 * float(st.get('cpu_frac') or 0):.2f} % of a core.", "",
                  "| t (s) | round | source | action | rationale |", "|---|---|---|---|---|"]
        start = b.get("load_t0", 0.0)
        for d in b["sair_decisions"]:
            act = "; ".join(f"{n} " + " ".join(f"{k} {v:+g}" for k, v in x.items() if v)
                            for n, x in (d.get("action") or {}).items()
                            if any(x.values())) or "hold"
            why = (d.get("rationale") or d.get("error") or "").replace("|", "/")
            why = why.replace("\n", " ")[:160]
            lines.append(f"| {float(d['time']) - start:.0f} | {d['round']} | {d['source']} | "
                         f"{act} | {why} |")
    return "\n".join(lines) + "\n"


def _load_text(o: dict[str, Any]) -> str:
    if o["pattern"] == "burst":
        return (f"{o['base']:g} req/s, spikes of {o['spike']:g} req/s for {o['spike_s']:g} s "
                f"every {o['period']:g} s, first after {min(o['phase'], o['seconds'] / 4):g} s; "
                f"{o['image_px'][0]}x{o['image_px'][1]} JPEGs")
    return f"ramp {o['ramp_from']:g} -> {o['ramp_to']:g} req/s"


def print_table(result: dict[str, Any]) -> None:
    rows = comparison_rows(result["runs"], result["stages"], result["sla_ms"])
    head = ("measure", "A: Serve", "B: SAIR", "B/A")
    w = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    print("  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)))
    for r in rows:
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))


def write_outputs(result: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(_clean(result), indent=1))
    (out / "report.md").write_text(markdown(result))


def _clean(x: Any) -> Any:
    """Strict JSON: NaN/inf -> null, numpy scalars -> Python, anything else -> str."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=float, default=240.0, help="load duration per run")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "live-vs-serve")
    ap.add_argument("--only", choices=("A", "B"), help="run only A (Serve) or B (SAIR)")
    ap.add_argument("--pattern", choices=("burst", "ramp"), default="burst")
    ap.add_argument("--base", type=float, default=2.0, help="burst: base req/s")
    ap.add_argument("--spike", type=float, default=6.0, help="burst: spike req/s")
    ap.add_argument("--period", type=float, default=90.0, help="burst: period, s")
    ap.add_argument("--spike-s", type=float, default=45.0, help="burst: spike length, s")
    ap.add_argument("--phase", type=float, default=30.0,
                    help="burst: base-rate seconds before the first spike (<= seconds/4)")
    ap.add_argument("--ramp-from", type=float, default=1.0, help="ramp: start req/s")
    ap.add_argument("--ramp-to", type=float, default=8.0, help="ramp: end req/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64, help="most requests in flight")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    ap.add_argument("--image-px", type=lambda s: tuple(int(v) for v in s.split("x")),
                    default=(3200, 2400), help="JPEG size WxH")
    ap.add_argument("--max-replicas", type=int, default=4, help="per stage, both runs")
    ap.add_argument("--target-ongoing", type=float, default=2.0,
                    help="A: Serve target_ongoing_requests (Serve's default 2)")
    ap.add_argument("--serve-upscale-delay", type=float, default=SAIR_COOLDOWN_UP_S,
                    help="A: Serve upscale_delay_s (Serve's default 30)")
    ap.add_argument("--serve-downscale-delay", type=float, default=SAIR_COOLDOWN_DOWN_S,
                    help="A: Serve downscale_delay_s (Serve's default 600)")
    ap.add_argument("--interval", type=float, default=15.0, help="B: SAIR decision interval, s")
    ap.add_argument("--sair-resources", choices=("pinned", "free"), default="pinned",
                    help="B: pin CPU/memory per replica (replica moves only) or let SAIR "
                         "resize them too (rolling restarts)")
    ap.add_argument("--num-cpus", type=int, default=16,
                    help="logical CPUs of the local Ray (16 = every stage at 4 replicas)")
    ap.add_argument("--http-port", type=int, default=8400)
    ap.add_argument("--dashboard-port", type=int, default=8466)
    ap.add_argument("--sample-s", type=float, default=2.0, help="replica sampling period")
    ap.add_argument("--progress-s", type=float, default=10.0, help="progress line period")
    ap.add_argument("--warmup-requests", type=int, default=3)
    a = ap.parse_args(argv)
    if not a.seconds > 0:
        ap.error("--seconds must be > 0")
    if a.max_replicas < 1:
        ap.error("--max-replicas must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    from sair_ray.profiles import load_profile

    a = parse_args(argv)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    sla_ms = load_profile(APP).pipeline.sla_ms
    opts = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(a).items()}
    result: dict[str, Any] = {"app": APP, "date": time.strftime("%Y-%m-%d %H:%M"),
                              "options": opts, "sla_ms": sla_ms, "stages": stage_names(),
                              "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                              "cores": os.cpu_count(), "runs": {}}
    say(f"load average {result['load_at_start']}; results to {out}")
    interrupted = False
    try:
        for kind in ([a.only] if a.only else ["A", "B"]):
            rec = run_one(kind, a, out, sla_ms)
            result["runs"][kind] = rec
            write_outputs(result, out)
            if rec.get("interrupted"):
                interrupted = True
                break
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted")
    finally:
        result["interrupted"] = interrupted
        _add_ratios(result)
        write_outputs(result, out)
    print_table(result)
    print(f"\nwritten: {out / 'results.json'}, {out / 'report.md'}")
    return 130 if interrupted else 0


def _add_ratios(result: dict[str, Any]) -> None:
    A, B = result["runs"].get("A"), result["runs"].get("B")
    if not (A and B and "requests" in A and "requests" in B and "replica_s" in A
            and "replica_s" in B):
        return
    ra, rb = A["replica_s"], B["replica_s"]
    result["ratios_B_over_A"] = {
        "p99": _ratio(B["requests"]["p99_ms"], A["requests"]["p99_ms"]),
        "p95": _ratio(B["requests"]["p95_ms"], A["requests"]["p95_ms"]),
        "p50": _ratio(B["requests"]["p50_ms"], A["requests"]["p50_ms"]),
        "replica_s": {n: _ratio(rb[n], ra[n]) for n in ra},
        "replica_s_total": _ratio(sum(rb.values()), sum(ra.values())),
        "cpu_s_total": _ratio(sum(B["cpu_s"].values()), sum(A["cpu_s"].values())),
    }


if __name__ == "__main__":
    sys.exit(main())

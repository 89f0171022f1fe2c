"""Live soak: SAIR attached to image_classification on a private local Ray for
N minutes of Poisson load, watching the memory of the processes that live as long as the
app does.

    .venv/bin/python benchmarks/soak_live.py [--minutes 10] [--rate 2] [--interval 10]
        [--sample-s 30] [--policy sair-retrieval] [--max-growth-mb 30] [--json out.json]

What runs: Ray with the dashboard (8 logical CPUs), image_classification deployed from its
serve config on CPU (no Ray memory reservations), SAIR as the detached controller actor
with the retrieval-only policy (`sair-retrieval`: SAIR's memory, retrieval, exploration
and validator, no LLM, so the controller's CPU stays low and what is measured is the
loop), every experience stored (`reward.store_all`) so the memory grows every round, a
round every `--interval` s. CPU and memory per replica are pinned to the profile's
values and replicas capped at 2 per stage, so SAIR's moves are replica counts (no
rolling restarts on a small machine). The load is open-loop Poisson at `--rate` req/s
(sair_ray.loadgen) for the whole run.

Every `--sample-s` seconds it records the resident set size (VmRSS) of the SAIR
controller actor, the app's metrics actor and this driver (which runs the load
generator), with the controller's rounds and memory size, the metrics actor's record
count and the requests answered so far; a table is printed at the end. Exit status 1 if
any of the three processes grew by more than `--max-growth-mb` over the second half of
the run (first sample at or after half-time -> last sample), if the controller restarted,
or if a round failed; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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
APP = "image_classification"
SERVE_CONFIG = ROOT / "serve_apps" / "configs" / f"{APP}.yaml"
PROFILE = ROOT / "sair_ray" / "profiles" / f"{APP}.yaml"
PROCS = ("controller", "metrics", "driver")


@dataclass
class Sample:
    t_min: float
    controller_mb: float
    metrics_mb: float
    driver_mb: float
    rounds_ok: int
    rounds_failed: int
    memory: int             # experiences in SAIR's memory
    records: int            # request records held by the metrics actor
    sent: int               # requests answered so far (any status)
    ok: int
    p99_ms: float           # client-side p99 of the requests answered since the last sample
    load1: float            # the machine's 1-minute load average
    controller_pid: int = 0


@dataclass
class SoakResult:
    samples: list[Sample]
    growth_mb: dict[str, float]          # second-half growth per process
    options: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def rss_mb(pid: int) -> float:
    """VmRSS of a process on this machine, MB (NaN if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def actor_pid(name: str, namespace: str) -> int:
    """The process of the live named actor (after a restart, the new one)."""
    import ray

    actor = ray.get_actor(name, namespace=namespace)
    from ray.util.state import get_actor

    # This driver's own cluster, by address: never whichever Ray the state API finds.
    state = get_actor(actor._actor_id.hex(), address=ray.get_runtime_context().gcs_address)
    if state is None or not state.pid:
        raise RuntimeError(f"no process known for actor {name!r}")
    return int(state.pid)


def pinned_profile(path: Path) -> Path:
    """The shipped profile, CPU and memory pinned to the initial values, <= 2 replicas."""
    from sair_ray.profiles import replica_moves_only

    prof = replica_moves_only(yaml.safe_load(PROFILE.read_text()), replicas_max=2)
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


def growth(samples: list[Sample]) -> dict[str, float]:
    """Per process: RSS at the last sample minus RSS at the first sample at or after half
    of the run (the first half holds start-up: imports, model load, first compactions)."""
    if len(samples) < 2:
        return {p: math.nan for p in PROCS}
    half = samples[-1].t_min / 2
    mid = next(s for s in samples if s.t_min >= half)
    return {p: round(getattr(samples[-1], f"{p}_mb") - getattr(mid, f"{p}_mb"), 1)
            for p in PROCS}


def soak(minutes: float = 10.0, rate: float = 2.0, interval_s: float = 10.0,
         sample_s: float = 30.0, policy: str = "sair-retrieval", max_growth_mb: float = 30.0,
         http_port: int = 8330, num_cpus: int = 8, seed: int = 0,
         workdir: Path | None = None, log: Any = None) -> SoakResult:
    import ray

    from sair_ray.backends.ray_serve import ServeAdmin, discover_dashboard_url
    from sair_ray.live import attach
    from sair_ray.live.actor import NAMESPACE
    from sair_ray.live.actor import actor_name as controller_name
    from sair_ray.loadgen import LoadRunner, app_bodies, build_plan
    from sair_ray.observe import METRICS_NAMESPACE, MetricsClient, drop_aggregator
    from sair_ray.observe import actor_name as metrics_name
    from sair_ray.workloads import Poisson

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    work = Path(workdir or tempfile.mkdtemp(prefix="sair-soak-live-"))
    opts = {"minutes": minutes, "rate": rate, "interval_s": interval_s, "sample_s": sample_s,
            "policy": policy, "max_growth_mb": max_growth_mb, "seed": seed,
            "num_cpus": num_cpus, "nproc": os.cpu_count()}
    cfg = {"loop": {"decision_interval_s": interval_s, "settle_s": min(5.0, interval_s / 2)},
           "reward": {"store_all": True}, "exploration": {"safe": True}}
    samples: list[Sample] = []
    answered: list[tuple[float, str, float]] = []    # (time, status, latency ms)
    handle = None
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    try:
        admin = ServeAdmin(discover_dashboard_url(), timeout_s=180)
        serve_cfg = yaml.safe_load(SERVE_CONFIG.read_text())
        serve_cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
        serve_cfg["applications"][0]["args"] = {"device": "cpu", "reserve_memory": False}
        say(f"deploying {APP} ...")
        admin.deploy(serve_cfg)
        deadline = time.time() + 300
        while admin.details().get("applications", {}).get(APP, {}).get("status") != "RUNNING":
            if time.time() > deadline:
                raise TimeoutError(f"{APP} not RUNNING after 300 s")
            time.sleep(1)
        say(f"attaching SAIR ({policy}) ...")
        handle = attach(APP, cfg, policy, profile=str(pinned_profile(work / "profile.yaml")),
                        data_dir=work / "sair-data")
        metrics = MetricsClient(APP)
        plan = build_plan(Poisson(rate), minutes * 60.0, seed=seed)
        runner = LoadRunner(f"http://127.0.0.1:{http_port}/{APP}", plan,
                            app_bodies(APP, plan), concurrency=256, timeout_s=60)
        load = threading.Thread(target=lambda: asyncio.run(runner.run(
            lambda r: answered.append((time.time(), r.status, r.latency_ms)))), daemon=True)
        t0 = time.time()
        load.start()
        say(f"{len(plan)} requests over {minutes:g} min at {rate:g} req/s; "
            f"sampling every {sample_s:g} s")
        duration = minutes * 60.0
        offsets = [k * sample_s for k in range(int(duration // sample_s) + 1)
                   if k * sample_s < duration] + [duration]
        last = t0
        for i, offset in enumerate(offsets):
            time.sleep(max(0.0, t0 + offset - time.time()))
            if i == len(offsets) - 1:
                # the plan is all sent by now; the last sample waits for the requests still
                # in flight, so it counts every answer
                load.join(120)
            now = time.time()
            st = handle.status()
            done = list(answered)
            recent = [lat for t, s, lat in done if t > last and s == "ok"]
            cpid = actor_pid(controller_name(APP), NAMESPACE)
            sample = Sample(
                t_min=round((now - t0) / 60, 2),
                controller_mb=round(rss_mb(cpid), 1),
                metrics_mb=round(rss_mb(actor_pid(metrics_name(APP), METRICS_NAMESPACE)), 1),
                driver_mb=round(rss_mb(os.getpid()), 1),
                rounds_ok=st["rounds_ok"], rounds_failed=st["rounds_failed"],
                memory=st["memory_size"], records=metrics.info()["records"],
                sent=len(done), ok=sum(x[1] == "ok" for x in done),
                p99_ms=round(float(np.percentile(recent, 99)), 0) if recent else math.nan,
                load1=round(os.getloadavg()[0], 2), controller_pid=cpid)
            samples.append(sample)
            say(" ".join(f"{k}={v}" for k, v in asdict(sample).items()))
            last = now
        final = handle.status()
        result = SoakResult(samples, growth(samples), opts)
        done = list(answered)
        lat = [x[2] for x in done if x[1] == "ok"]
        result.summary = {
            "requests": len(done), "ok": sum(x[1] == "ok" for x in done),
            "not_ok": {k: sum(x[1] == k for x in done) for k in {x[1] for x in done} - {"ok"}},
            "p50_ms": round(float(np.percentile(lat, 50)), 0) if lat else math.nan,
            "p99_ms": round(float(np.percentile(lat, 99)), 0) if lat else math.nan,
            "rounds_ok": final["rounds_ok"], "rounds_failed": final["rounds_failed"],
            "memory": final["memory_size"], "controller_cpu_frac": round(final["cpu_frac"], 4),
            "decide_ms_total": round(final["decide_ms"], 1)}
        for p, g in result.growth_mb.items():
            if not g <= max_growth_mb:
                result.failures.append(f"{p} RSS grew {g} MB over the second half "
                                       f"(bound {max_growth_mb:g} MB)")
        if len({s.controller_pid for s in samples}) > 1:
            result.failures.append("the controller actor restarted during the soak")
        if final["rounds_failed"]:
            result.failures.append(f"{final['rounds_failed']} rounds failed: "
                                   f"{final['last_error']}")
        return result
    finally:
        if handle is not None:
            try:
                handle.stop()
            except Exception as e:
                say(f"stopping the controller failed: {e}")
        try:
            from ray import serve

            serve.shutdown()
            drop_aggregator(APP)
        finally:
            ray.shutdown()


def to_markdown(samples: list[Sample]) -> str:
    cols = ["t_min", "controller_mb", "metrics_mb", "driver_mb", "rounds_ok", "rounds_failed",
            "memory", "records", "sent", "ok", "p99_ms", "load1"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(getattr(s, c)) for c in cols) + " |" for s in samples]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson req/s")
    ap.add_argument("--interval", type=float, default=10.0, help="decision interval, s")
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--policy", default="sair-retrieval")
    ap.add_argument("--max-growth-mb", type=float, default=30.0,
                    help="bound on each process's RSS growth over the second half")
    ap.add_argument("--http-port", type=int, default=8330)
    ap.add_argument("--json", type=Path, help="write samples and summary here")
    a = ap.parse_args(argv)
    r = soak(a.minutes, a.rate, a.interval, a.sample_s, a.policy, a.max_growth_mb,
             a.http_port)
    print(to_markdown(r.samples))
    print()
    print("second-half RSS growth (MB): " + ", ".join(f"{k} {v:+g}"
                                                       for k, v in r.growth_mb.items()))
    print("summary: " + json.dumps(r.summary))
    if a.json:
        a.json.write_text(json.dumps({"options": r.options, "samples": [asdict(s) for s in
                                                                        r.samples],
                                      "growth_mb": r.growth_mb, "summary": r.summary,
                                      "failures": r.failures}, indent=1))
    for f in r.failures:
        print(f"FAIL: {f}")
    print("PASS" if r.ok else "FAIL")
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())

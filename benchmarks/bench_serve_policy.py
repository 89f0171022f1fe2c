"""One call of the Serve-native policy (sair_ray/serve.py `SAIRPolicy`), as Serve's
controller makes it about every 0.1 s: the time it adds to Serve's control loop.

    .venv/bin/python benchmarks/bench_serve_policy.py [--deployments 3] [--calls 20000]
        [--quick] [--json FILE]

Cases, each on real `AutoscalingContext`s (lazy request counts, as Serve builds them):
`plan` (a fresh plan: targets clamped), `fallback` (no plan: Serve's default policy per
deployment), and `plan+wrapper` (the call through Ray's own app-level wrapper, which adds
scaling factors and delays; what Serve's controller runs). The plan is read by the policy's
poll thread, so no call waits on Ray; the thread runs during the timing. Prints a Markdown
table of p50/p99/max in microseconds. --quick: 500 calls (run by
tests/unit/test_serve_policy.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from ray.serve._private.common import DeploymentID
from ray.serve.autoscaling_policy import _apply_app_level_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from sair_ray.serve import Plan, SAIRPolicy


def contexts(n: int, app: str = "bench") -> dict[DeploymentID, AutoscalingContext]:
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=2)
    out = {}
    for i in range(n):
        name = f"stage{i}"
        dep = DeploymentID(name=name, app_name=app)
        out[dep] = AutoscalingContext(
            deployment_id=dep, deployment_name=name, app_name=app, current_num_replicas=2,
            target_num_replicas=2, running_replicas=[],
            total_num_requests=lambda: 5.0, total_queued_requests=lambda: 1.0,
            aggregated_metrics=dict, raw_metrics=dict, capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=8, policy_state={}, last_scale_up_time=None,
            last_scale_down_time=None, current_time=time.time(), config=cfg)
    return out


def timed(call: Any, ctxs: dict, calls: int) -> dict[str, float]:
    us = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        call(ctxs)
        us.append((time.perf_counter_ns() - t0) / 1000)
    us.sort()
    return {"p50_us": statistics.median(us), "p99_us": us[int(0.99 * (len(us) - 1))],
            "max_us": us[-1], "calls": calls}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployments", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    calls = 500 if a.quick else a.calls
    ctxs = contexts(a.deployments)
    fresh = Plan("bench", 1, time.time() + 3600, 15.0,
                 {f"stage{i}": 3 for i in range(a.deployments)})
    results = {}
    for case, plan, wrap in (("plan", fresh, False), ("fallback", None, False),
                             ("plan+wrapper", fresh, True)):
        policy = SAIRPolicy(poll_s=0.05, start_controller=False,
                            fetch=lambda app, p=plan: p, report=lambda *args: None)
        policy(ctxs)                                  # starts the poll thread
        while plan is not None and policy.plan is None:
            time.sleep(0.01)
        call = _apply_app_level_autoscaling_config(policy) if wrap else policy
        results[case] = timed(call, ctxs, calls)
        policy.close()
    out = {"deployments": a.deployments, "cases": results}
    print(f"| case ({a.deployments} deployments) | calls | p50 us | p99 us | max us |")
    print("|---|---:|---:|---:|---:|")
    for case, r in results.items():
        print(f"| {case} | {r['calls']:,} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
              f"{r['max_us']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

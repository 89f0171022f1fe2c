"""sair_ray.serve: the Serve-native policy's decision on real Ray Serve AutoscalingContexts.

A fresh plan gives its targets clamped into each deployment's bounds; a missing, stale or
failing plan (or a deployment the plan does not name) gives Serve's default policy result.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve.autoscaling_policy import (  # noqa: E402
    _apply_app_level_autoscaling_config,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

from sair_ray import serve as sp  # noqa: E402
from tests.scripts import load_benchmark

NOW = 1_000_000.0
APP = "shop"


def ctx(name: str, *, running: int = 2, requests: float = 0.0, lo: int = 1, hi: int = 6,
        state: dict | None = None, delay_s: float = 0.0) -> AutoscalingContext:
    cfg = AutoscalingConfig(min_replicas=lo, max_replicas=hi, target_ongoing_requests=2,
                            upscale_delay_s=delay_s, downscale_delay_s=delay_s)
    return AutoscalingContext(
        deployment_id=DeploymentID(name=name, app_name=APP), deployment_name=name,
        app_name=APP, current_num_replicas=running, target_num_replicas=running,
        running_replicas=[], total_num_requests=requests, total_queued_requests=0.0,
        aggregated_metrics={}, raw_metrics={}, capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi, policy_state=state or {},
        last_scale_up_time=None, last_scale_down_time=None, current_time=NOW, config=cfg)


def contexts(**kw: AutoscalingContext) -> dict[DeploymentID, AutoscalingContext]:
    return {c.deployment_id: c for c in kw.values()}


def plan(age_s: float = 1.0, interval_s: float = 10.0, failing: str = "",
         **targets: int) -> sp.Plan:
    return sp.Plan(APP, round=7, time=NOW - age_s, interval_s=interval_s, targets=targets,
                   failing=failing)


def by_name(d: dict) -> dict:
    return {k.name: v for k, v in d.items()}


def serve_default(c: AutoscalingContext) -> float:
    return replica_queue_length_autoscaling_policy(c)[0]


def test_fresh_plan_targets_clamped_to_each_deployments_bounds() -> None:
    cs = contexts(a=ctx("pre", hi=6), b=ctx("post", lo=2, hi=4), c=ctx("ingress", lo=1))
    targets, modes = sp.decide(cs, plan(pre=5, post=9, ingress=0), NOW)
    assert by_name(targets) == {"pre": 5, "post": 4, "ingress": 1}
    assert set(modes.values()) == {sp.SAIR}


@pytest.mark.parametrize(("p", "mode"), [
    (None, sp.MISSING),
    (plan(age_s=21.0, pre=5), sp.STALE),           # older than 2 rounds of 10 s
    (plan(failing="dashboard down", pre=5), sp.FAILING),
])
def test_missing_stale_or_failing_plan_falls_back_to_serves_default(p, mode) -> None:
    c = ctx("pre", running=2, requests=12.0)       # 12 ongoing / (2 per replica) -> 6
    targets, modes = sp.decide(contexts(a=c), p, NOW)
    assert by_name(targets) == {"pre": serve_default(c)} == {"pre": pytest.approx(6.0)}
    assert by_name(modes) == {"pre": mode}


def test_plan_not_naming_a_deployment_falls_back_for_that_one_only() -> None:
    other = ctx("other", running=1, requests=5.0)
    targets, modes = sp.decide(contexts(a=ctx("pre"), b=other), plan(pre=3), NOW)
    assert by_name(targets) == {"pre": 3, "other": serve_default(other)}
    assert by_name(modes) == {"pre": sp.SAIR, "other": sp.NOT_IN_PLAN}


def test_a_plan_exactly_two_rounds_old_is_still_followed() -> None:
    assert sp.plan_mode(plan(age_s=20.0), NOW) == sp.SAIR
    assert sp.plan_mode(plan(age_s=20.5), NOW) == sp.STALE
    assert sp.plan_mode(plan(age_s=20.5), NOW, stale_rounds=3) == sp.SAIR


def test_plan_round_trips_through_json() -> None:
    p = plan(failing="x", pre=2, post=1)
    assert sp.Plan.from_json(p.to_json()) == p


class FakeKV:
    def __init__(self, p: sp.Plan | None = None) -> None:
        self.plan = p
        self.reports: list[tuple] = []
        self.reported = threading.Event()

    def fetch(self, app: str) -> sp.Plan | None:
        assert app == APP
        return self.plan

    def report(self, app, modes, plan_round, now) -> None:
        self.reports.append((app, dict(modes), plan_round))
        self.reported.set()


def wait_for(cond, timeout_s: float = 5.0) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline
        time.sleep(0.01)


def test_policy_under_serves_wrapper_follows_the_polled_plan_and_reports_modes() -> None:
    """The class as Serve runs it (Ray's own app-level wrapper around it): first calls
    fall back (nothing polled yet), then the plan is followed; modes reach the report."""
    kv = FakeKV(plan(pre=4, post=1))
    policy = sp.SAIRPolicy(poll_s=0.01, start_controller=False, fetch=kv.fetch,
                           report=kv.report, clock=lambda: NOW)
    wrapped = _apply_app_level_autoscaling_config(policy)
    cs = contexts(a=ctx("pre", running=2, requests=0.0), b=ctx("post", running=2))
    decisions, state = wrapped(cs)
    assert set(by_name(state)) == {"pre", "post"}
    wait_for(lambda: policy.plan is not None)
    decisions, state = wrapped(cs)
    assert by_name(decisions) == {"pre": 4, "post": 1}
    assert {v[sp.MODE_KEY] for v in state.values()} == {sp.SAIR}
    wait_for(lambda: any(r[1] == {"pre": sp.SAIR, "post": sp.SAIR} for r in kv.reports))
    assert kv.reports[-1] == (APP, {"pre": sp.SAIR, "post": sp.SAIR}, 7)
    kv.plan = None                              # the plan goes away: fallback again
    wait_for(lambda: policy.plan is None)
    decisions, state = wrapped(cs)
    assert {v[sp.MODE_KEY] for v in state.values()} == {sp.MISSING}
    policy.close()


def test_policy_starts_the_controller_once_and_survives_its_failure() -> None:
    calls: list[str] = []

    def start(app: str) -> None:
        calls.append(app)
        raise RuntimeError("no Ray here")

    kv = FakeKV()
    policy = sp.SAIRPolicy(poll_s=0.01, start_controller=False, fetch=kv.fetch,
                           report=kv.report, clock=lambda: NOW)
    policy._start = start
    policy(contexts(a=ctx("pre")))
    wait_for(lambda: kv.reported.is_set())
    assert calls == [APP]
    policy.close()


def test_without_ray_publishing_and_reading_are_no_ops() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray session is connected in this process")
    assert sp.publish_plan(plan(pre=1)) is False
    assert sp.fetch_plan(APP) is None and sp.read_modes(APP) is None


def test_policy_call_benchmark_quick_mode(capsys) -> None:
    """benchmarks/bench_serve_policy.py --quick: every case runs, far under the 1 ms target
    at the median (p99 on a loaded CI machine is left to the published run)."""
    bench = load_benchmark("bench_serve_policy")
    out = bench.main(["--quick"])
    assert set(out["cases"]) == {"plan", "fallback", "plan+wrapper"}
    assert all(r["p50_us"] < 1000 for r in out["cases"].values())
    assert "| plan+wrapper | 500 |" in capsys.readouterr().out

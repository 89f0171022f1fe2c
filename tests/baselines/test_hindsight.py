"""Hindsight oracle: its shadow run is the benchmark's run, and on a short case it meets
the SLA at no more cost than the model oracle."""

from __future__ import annotations

from sair_ray import registry
from sair_ray.backends.sim import SimBackend
from sair_ray.baselines.hindsight import HindsightOracle
from sair_ray.bench.grid import bench_config, build_grid, make_workload, run_one
from sair_ray.controller import Controller, run_virtual
from sair_ray.profiles import load_profile
from sair_ray.sim.fork import state_signature

APP = "nlp_analysis"


def test_registered_with_the_model_oracle_renamed_by_alias():
    assert registry.get("hindsight-oracle").simulator_only
    assert registry.get("model-oracle").name == "oracle"
    profile = load_profile(APP)
    cfg = bench_config(4)
    h = registry.make_policy("hindsight-oracle", cfg, pipeline=profile.pipeline,
                             profile=profile, workload=profile.default_workload())
    assert isinstance(h, HindsightOracle) and h.seed == 4


def test_the_shadow_run_is_the_real_run():
    profile = load_profile(APP)
    workload = make_workload(profile, "burst", 600.0)
    cfg = bench_config(2)
    backend = SimBackend(profile, workload, seed=2, cost=cfg.cost)
    policy = registry.make_policy("hindsight-oracle", cfg, pipeline=profile.pipeline,
                                  profile=profile, workload=workload)
    ctl = Controller(backend, policy, cfg, explore=False, learn=False)
    run_virtual(ctl, backend, until=150)
    assert isinstance(policy, HindsightOracle) and policy.shadow is not None
    shadow = policy.shadow.sim
    shadow.apply(backend.sim.allocation, shadow.now)   # the last round's action
    assert shadow.now == backend.now == 150
    assert state_signature(shadow) == state_signature(backend.sim)
    assert ctl.counters.noops < 5   # it acts (the initial allocation is not the cheapest)


def test_meets_the_sla_at_no_more_cost_than_the_model_oracle():
    rows = {m: run_one(build_grid([APP], ["poisson"], [m], [1], hours=0.1)[0])
            for m in ("oracle", "hindsight-oracle")}
    h, o = rows["hindsight-oracle"], rows["oracle"]
    assert h["sla_attainment_steady"] >= 0.99 and h["p99_steady_ms"] <= 250
    assert h["drops"] == 0 and h["errors"] == 0
    assert h["usd_per_1k_effective"] <= o["usd_per_1k_effective"]

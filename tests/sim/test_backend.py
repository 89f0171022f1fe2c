"""SimBackend as the controller's Backend port."""

from __future__ import annotations

import pytest

from sair_ray.backends.base import Backend
from sair_ray.backends.sim import SimBackend
from sair_ray.baselines import HPA
from sair_ray.config import SAIRConfig
from sair_ray.controller import Controller, run_virtual
from sair_ray.types import Context, StageAllocation


def test_sim_backend_is_a_backend():
    b = SimBackend("image_classification", seed=1)
    assert isinstance(b, Backend)
    assert b.pipeline.stage_names == ("preprocess", "inference", "postprocess")


def test_observe_returns_the_spec_2_context():
    b = SimBackend("image_classification", {"kind": "poisson", "rate": 10}, seed=1)
    b.advance_to(60)
    ctx = b.observe(30, 60)
    assert isinstance(ctx, Context)
    assert ctx.time == 60 and ctx.sla_ms == 1000 and ctx.app == "image_classification"
    assert ctx.arrival_rate == pytest.approx(10, rel=0.3)
    assert [s.name for s in ctx.stages] == list(b.pipeline.stage_names)
    pre = ctx.stage("preprocess")
    assert pre.util == pytest.approx(10 * 0.06, abs=0.2)  # ~0.6 busy at 10 req/s x 60 ms
    assert 40 < pre.p50_ms < 80
    assert ctx.cost_rate == pytest.approx(b.window(30, 60).cost_rate_effective)
    assert Context.from_dict(ctx.to_dict()) == ctx


def test_apply_changes_the_declared_allocation_and_free_resources():
    b = SimBackend("image_classification", seed=1)
    free0 = b.free_resources()
    b.advance_to(30)
    b.apply({"preprocess": StageAllocation(3, 1500, 2048),
             "inference": StageAllocation(1, 2000, 4096, 0.5)}, 30)
    ctx = b.observe(0, 30)
    assert ctx.stage("preprocess").allocation == StageAllocation(3, 1500, 2048)
    assert ctx.stage("inference").rate == 0.5
    free1 = b.free_resources()
    assert free0.cpus - free1.cpus == pytest.approx(3 * 1.5 - 1.0)
    assert free0.memory_mb - free1.memory_mb == pytest.approx(3 * 2048 - 1024)
    assert free1.gpus == free0.gpus == 1


def test_observe_advances_virtual_time():
    b = SimBackend("nlp_analysis", {"kind": "poisson", "rate": 20}, seed=0)
    b.observe(0, 45)
    assert b.now == 45


def test_controller_runs_a_baseline_on_the_simulator():
    b = SimBackend("image_classification", seed=2)
    policy = HPA()
    ctl = Controller(b, policy, SAIRConfig(), explore=False)
    decisions = run_virtual(ctl, b, until=600)
    assert len(decisions) == 20
    final = b.observe(570, 600)
    assert final.stage("preprocess").replicas >= 4  # 50 req/s x 60 ms needs > 3 cores
    assert final.p99_ms < b.pipeline.sla_ms
    tot = b.totals()
    assert tot.completed > 0.9 * tot.arrivals
    assert tot.usd_per_1000_effective > 0

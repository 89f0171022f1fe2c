"""Ray Serve default policy: the target_ongoing_requests rule, its factors and delays,
checked against Ray's own implementation where Ray is installed."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.baselines import RayServeDefault
from sair_ray.baselines.ray_serve import ongoing_requests, scaled_replicas
from tests.baselines.helpers import alloc, request, with_stage
from tests.factories import pipeline

P = pipeline()
BASE = {"preprocess": alloc(2), "inference": alloc(1, 2000, 4096), "postprocess": alloc(1)}


def _req(now: float, replicas: int, ongoing: float):
    """A context whose preprocess stage averages `ongoing` requests by Little's law."""
    ctx = request(now, P, alloc={**BASE, "preprocess": alloc(replicas)}).context
    ctx = with_stage(ctx, "preprocess", throughput_rps=10.0, p50_ms=100.0 * ongoing,
                     queue_delay_ms=0.0, queue=0.0)
    for other in ("inference", "postprocess"):  # keep the other stages steady at target
        ctx = with_stage(ctx, other, throughput_rps=10.0, p50_ms=200.0, queue_delay_ms=0.0)
    return replace(request(now, P), context=ctx)


def test_ongoing_requests_by_littles_law_and_queue_floor():
    ctx = request(0, P).context
    s = with_stage(ctx, "preprocess", throughput_rps=20.0, queue_delay_ms=150.0, p50_ms=50.0,
                   queue=1.0).stage("preprocess")
    assert ongoing_requests(s) == pytest.approx(4.0)
    s = with_stage(ctx, "preprocess", throughput_rps=1.0, queue_delay_ms=0, p50_ms=10,
                   queue=30.0).stage("preprocess")
    assert ongoing_requests(s) == 30.0


def test_upscale_waits_upscale_delay_then_goes_to_ongoing_over_target():
    rs = RayServeDefault()
    assert rs.decide(_req(0, 2, 8.0)).proposal["preprocess"] == {"action": "none"}
    assert rs.decide(_req(15, 2, 8.0)).proposal["preprocess"] == {"action": "none"}
    assert rs.decide(_req(30, 2, 8.0)).proposal["preprocess"] == {
        "action": "scale_replicas", "replicas": 4}  # 8 ongoing / 2 per replica


def test_downscale_needs_600_s_of_uninterrupted_wishes():
    rs = RayServeDefault()
    assert rs.decide(_req(0, 4, 2.0)).proposal["preprocess"] == {"action": "none"}
    assert rs.decide(_req(300, 4, 2.0)).proposal["preprocess"] == {"action": "none"}
    rs.decide(_req(330, 4, 8.0))  # one wish the other way resets the clock
    assert rs.decide(_req(360, 4, 2.0)).proposal["preprocess"] == {"action": "none"}
    assert rs.decide(_req(959, 4, 2.0)).proposal["preprocess"] == {"action": "none"}
    assert rs.decide(_req(960, 4, 2.0)).proposal["preprocess"] == {
        "action": "scale_replicas", "replicas": 1}


def test_scaling_factors_and_stuck_downscale():
    assert scaled_replicas(6.0, 2, 0.5, 1.0) == 4
    assert scaled_replicas(2.0, 4, 1.0, 0.1) == 3   # stuck at 4 by the factor: take one off
    assert scaled_replicas(3.5, 4, 1.0, 0.1) == 4   # ceil(3.5) == 4: nothing to do


try:  # Ray is an optional extra; only the differential tests need it
    with warnings.catch_warnings():  # Ray's own pydantic deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve import autoscaling_policy as ray_policy
        from ray.serve.config import AutoscalingConfig
except ImportError:  # pragma: no cover - depends on the environment
    ray_policy = None
needs_ray = pytest.mark.skipif(ray_policy is None, reason="ray[serve] not installed")


@needs_ray
@settings(max_examples=80, deadline=None)
@given(desired=st.floats(0.0, 20.0), current=st.integers(1, 10),
       up=st.floats(0.1, 3.0), down=st.floats(0.1, 3.0))
def test_scaling_factors_match_ray(desired, current, up, down):
    cfg = AutoscalingConfig(upscaling_factor=up, downscaling_factor=down, min_replicas=0,
                            max_replicas=100)
    assert scaled_replicas(desired, current, up, down) == \
        ray_policy._apply_scaling_factors(desired, current, cfg)


@needs_ray
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(1.0, 120.0), st.integers(1, 8)), min_size=1,
                      max_size=12))
def test_delay_logic_matches_ray(steps):
    cfg = AutoscalingConfig(upscale_delay_s=30.0, downscale_delay_s=90.0)
    ours = RayServeDefault(upscale_delay_s=30.0, downscale_delay_s=90.0)
    state: dict = {}
    now, current = 0.0, 2
    for dt, desired in steps:
        now += dt
        theirs, state = ray_policy._apply_delay_logic(desired, current, cfg, state, _now=now)
        mine = ours._delay("s", desired, current, now)
        assert mine == theirs
        current = mine

"""Threshold: per-stage latency thresholds, +1/-1, cooldown."""

from __future__ import annotations

from dataclasses import replace

from sair_ray.baselines import Threshold
from tests.baselines.helpers import alloc, request, with_stage
from tests.factories import pipeline

P = pipeline()
BASE = {"preprocess": alloc(3), "inference": alloc(2, 2000, 4096), "postprocess": alloc(1)}


def _decide(t: Threshold, now: float, p99: dict[str, float]) -> dict:
    lat = {"preprocess": 80.0, "inference": 150.0, "postprocess": 80.0, **p99}
    return t.decide(request(now, P, alloc=BASE, stage_p99=lat)).proposal


def test_above_threshold_adds_a_replica_below_half_removes_one():
    p = _decide(Threshold(), 0, {"preprocess": 150.0, "inference": 90.0, "postprocess": 80.0})
    assert p["preprocess"] == {"action": "scale_replicas", "replicas": 4}
    assert p["inference"] == {"action": "scale_replicas", "replicas": 1}  # 90 < 100 (200/2)
    assert p["postprocess"] == {"action": "none"}                         # 50 <= 80 <= 100


def test_gpu_stages_use_their_own_threshold():
    p = _decide(Threshold(), 0, {"inference": 180.0})
    assert p["inference"] == {"action": "none"}          # 180 ms < 200 ms GPU threshold
    p = _decide(Threshold(cpu_p99_ms=100, gpu_p99_ms=150), 0, {"inference": 180.0})
    assert p["inference"] == {"action": "scale_replicas", "replicas": 3}


def test_cooldown_blocks_a_second_change_for_60_s():
    t = Threshold()
    assert _decide(t, 0, {"preprocess": 500.0})["preprocess"]["action"] == "scale_replicas"
    assert _decide(t, 30, {"preprocess": 500.0})["preprocess"] == {"action": "none"}
    assert _decide(t, 59.9, {"preprocess": 10.0})["preprocess"] == {"action": "none"}
    assert _decide(t, 60, {"preprocess": 500.0})["preprocess"]["action"] == "scale_replicas"
    # a stage that did not change is not in cooldown
    assert _decide(t, 30, {"inference": 900.0})["inference"]["action"] == "scale_replicas"


def test_queueing_delay_counts_and_limits_hold():
    at_max = request(0, P, alloc={**BASE, "preprocess": alloc(8)},
                     stage_p99={"preprocess": 500.0})
    assert Threshold().decide(at_max).proposal["preprocess"] == {"action": "none"}
    # 40 ms processing + 80 ms waiting = 120 ms > 100 ms
    ctx = with_stage(request(0, P, alloc=BASE).context, "preprocess", p99_ms=40.0,
                     queue_delay_ms=80.0)
    r = replace(at_max, context=ctx)
    assert Threshold().decide(r).proposal["preprocess"] == {"action": "scale_replicas",
                                                            "replicas": 4}

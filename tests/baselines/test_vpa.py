"""VPA: decaying histogram percentiles, confidence-widened bounds, update only outside them."""

from __future__ import annotations

import numpy as np
import pytest

from sair_ray.baselines import VPA
from sair_ray.baselines.vpa import DAY_S, DecayingHistogram
from tests.baselines.helpers import alloc, request
from tests.factories import pipeline

P = pipeline()


def test_histogram_percentiles_are_bucket_ends_near_the_truth():
    h = DecayingHistogram(0.01, 1000.0, half_life_s=DAY_S)
    xs = np.random.default_rng(0).uniform(0.0, 2.0, 5000)
    for x in xs:
        h.add(float(x), 1.0, 0.0)
    for p in (0.5, 0.9, 0.95):
        truth = float(np.quantile(xs, p))
        assert truth <= h.percentile(p) <= truth * 1.06  # the bucket's end, buckets 5 % wide


def test_histogram_weights_decay_with_the_half_life():
    h = DecayingHistogram(0.01, 1000.0, half_life_s=100.0)
    for _ in range(100):
        h.add(1.0, 1.0, 0.0)
    for _ in range(10):
        h.add(3.0, 1.0, 1000.0)  # 10 half-lives later: each weighs 1024x an old one
    assert h.percentile(0.5) == pytest.approx(3.0, rel=0.06)


def _run(vpa: VPA, util: float, cpu_m: int = 1000, mem_mb: int = 1024, hours: float = 30,
         step_s: float = 3600) -> dict:
    proposal: dict = {}
    for t in np.arange(0, hours * 3600 + 1, step_s):
        a = {"preprocess": alloc(1, cpu_m, mem_mb), "inference": alloc(1, 2000, 4096),
             "postprocess": alloc(1)}
        proposal = vpa.decide(request(float(t), P, alloc=a, util={"preprocess": util,
                                                                  "postprocess": 0.5})).proposal
    return proposal


def test_confident_history_shrinks_an_oversized_request():
    p = _run(VPA(samples_per_day=24), util=0.3)  # 0.3 cores used of 1 requested
    e = p["preprocess"]
    assert e["action"] == "scale_resources"
    assert 345 <= e["cpu_millicores"] <= 363  # P90 0.3 cores (bucket end, +5 %) x 1.15
    assert e["memory_mb"] == 1024              # no memory information: left alone
    assert p["inference"] == {"action": "none"}  # GPU stages are not VPA's


def test_request_inside_the_band_is_left_alone():
    p = _run(VPA(samples_per_day=24), util=0.6)
    # usage 0.6 cores -> band [~0.69, ~1.4] after 30 h of history; 1 core is inside it
    assert p["preprocess"] == {"action": "none"}


def test_young_history_only_scales_up():
    vpa = VPA()  # real defaults: 24 h half-life, 1 sample/min for full confidence
    assert _run(vpa, util=0.2, hours=1, step_s=30)["preprocess"] == {"action": "none"}
    up = _run(VPA(), util=1.0, hours=1, step_s=30)["preprocess"]  # throttled at 1 core
    assert up["action"] == "scale_resources" and up["cpu_millicores"] > 1100


def test_memory_below_the_working_set_is_raised_like_an_oom():
    vpa = VPA(samples_per_day=24, memory_need_mb={"preprocess": 2000})
    e = _run(vpa, util=0.5, mem_mb=1024)["preprocess"]
    # OOM sample max(1.2 x 1024, 1024 + 100) = 1229 MB, target P90 x 1.15 ~ 1413 MB
    assert e["action"] == "scale_resources"
    assert 1413 <= e["memory_mb"] <= 1413 * 1.06

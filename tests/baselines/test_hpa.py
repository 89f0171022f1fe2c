"""HPA: Kubernetes' replica formula, tolerance band and stabilisation windows."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.baselines import HPA, hpa_desired
from tests.baselines.helpers import alloc, request
from tests.factories import pipeline

P = pipeline()
BASE = {"preprocess": alloc(2), "inference": alloc(1, 2000, 4096), "postprocess": alloc(1)}


def _decide(hpa: HPA, now: float, util: dict[str, float], replicas: int = 2) -> dict:
    a = {**BASE, "preprocess": alloc(replicas)}
    return hpa.decide(request(now, P, alloc=a, util={"inference": 0.7, "postprocess": 0.7,
                                                     **util})).proposal


def test_kubernetes_formula():
    assert hpa_desired(2, 1.4, 0.7, 0.1) == 4
    assert hpa_desired(3, 0.35, 0.7, 0.1) == 2          # ceil(1.5)
    assert hpa_desired(4, 0.75, 0.7, 0.1) == 4          # inside the band
    assert hpa_desired(4, 0.78, 0.7, 0.1) == 5          # ceil(4.457)
    assert hpa_desired(1, 0.0, 0.7, 0.1) == 0           # clamped to min replicas by the policy


@settings(max_examples=60, deadline=None)
@given(util=st.floats(0.0, 3.0), current=st.integers(1, 8))
def test_proposal_is_formula_clamped_or_none_inside_the_band(util, current):
    hpa = HPA(scale_down_stabilization_s=0.0)
    entry = _decide(hpa, 0.0, {"preprocess": util}, replicas=current)["preprocess"]
    if abs(util / 0.7 - 1) <= 0.1:
        assert entry == {"action": "none"}
    else:
        want = min(8, max(1, math.ceil(current * util / 0.7 - 1e-9)))
        expected = {"action": "none"} if want == current else \
            {"action": "scale_replicas", "replicas": want}
        assert entry == expected


def test_scale_down_waits_for_the_stabilisation_window():
    hpa = HPA(target=0.7, scale_down_stabilization_s=60.0)
    assert _decide(hpa, 0, {"preprocess": 1.4})["preprocess"] == {"action": "scale_replicas",
                                                                   "replicas": 4}
    # load drops: the 4-replica recommendation from t=0 holds for 60 s
    assert _decide(hpa, 30, {"preprocess": 0.35}, replicas=4)["preprocess"] == {
        "action": "none"}
    assert _decide(hpa, 60, {"preprocess": 0.35}, replicas=4)["preprocess"] == {
        "action": "scale_replicas", "replicas": 2}


def test_scale_up_is_immediate_and_gpu_stages_use_their_utilisation():
    hpa = HPA()
    p = _decide(hpa, 0, {"preprocess": 0.7, "inference": 1.0})
    assert p["inference"] == {"action": "scale_replicas", "replicas": 2}  # ceil(1/0.7)
    assert p["preprocess"] == {"action": "none"}


def test_target_is_a_parameter_for_sweeps():
    assert _decide(HPA(target=0.5), 0, {"preprocess": 0.6})["preprocess"] == {
        "action": "scale_replicas", "replicas": 3}
    assert _decide(HPA(target=0.9), 0, {"preprocess": 0.6})["preprocess"] == {
        "action": "none"}  # ceil(2 x 0.667) = 2
    assert _decide(HPA(target=0.2), 0, {"preprocess": 0.6})["preprocess"] == {
        "action": "scale_replicas", "replicas": 6}

"""Reward properties of docs/algorithm.md §3: separation, bounds, ablations."""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sair_ray.config import SAIRConfig, with_ablation
from sair_ray.pareto import ParetoFrontier
from sair_ray.reward import Outcome, RewardModel, capacity_added, score
from sair_ray.types import Action, StageDelta

SLA = 500.0
C_MAX = 10.0
lat = st.floats(0.0, 5 * SLA, allow_nan=False)
cost = st.floats(0.0, 2 * C_MAX, allow_nan=False)
outcome = st.builds(Outcome, lat, cost, st.floats(0.1, 500))
history = st.lists(st.tuples(lat, cost), max_size=30)
ablation = st.sampled_from(["full", "linear_penalty", "equal_weights", "cost_focus",
                            "no_bonus"])


def frontier_of(hist) -> ParetoFrontier:
    f = ParetoFrontier()
    for l, c in hist:
        f.add(min(1.0, l / (2 * SLA)), min(1.0, c / C_MAX))
    return f


def run(cfg, front, o, prev, v_prev=0.0, up=0.0):
    return score(cfg.reward, front, outcome=o, prev=prev, v_prev=v_prev, up_sum=up,
                 n_stages=3, sla_ms=SLA, c_max=C_MAX)


@settings(max_examples=300, deadline=None)
@given(history.filter(len), st.lists(outcome, min_size=2, max_size=12), outcome, ablation)
def test_nondominated_scores_at_least_point_two_above_dominated(hist, outs, prev, abl):
    cfg = with_ablation(SAIRConfig(), abl)
    front = frontier_of(hist)
    scored = [run(cfg, front, o, prev) for o in outs]
    nd = [r.r_pareto for r in scored if not r.dominated]
    dom = [r.r_pareto for r in scored if r.dominated]
    event(f"both kinds present: {bool(nd and dom)}")
    for a in nd:
        for b in dom:
            assert a - b >= 0.2 - 1e-12


@settings(max_examples=300, deadline=None)
@given(history, outcome, st.one_of(st.none(), outcome), st.floats(0, 5), st.floats(0, 10),
       ablation)
def test_every_term_within_its_bounds(hist, o, prev, v_prev, up, abl):
    cfg = with_ablation(SAIRConfig(), abl)
    r = run(cfg, frontier_of(hist), o, prev, v_prev, up)
    assert -1 <= r.r_lat <= 1 and -1 <= r.r_cost <= 1
    assert 0 <= r.p_sla <= cfg.reward.kappa
    assert -1 <= r.r_pareto <= 1
    assert (0.1 <= r.r_pareto) if not r.dominated else (r.r_pareto <= -0.1)
    assert 0 <= r.b_pro <= cfg.reward.beta
    assert -3 <= r.total <= 3
    if prev is None:
        assert r.r_lat == 0 and r.r_cost == 0 and r.b_pro == 0


@settings(max_examples=200, deadline=None)
@given(lat, outcome)
def test_penalty_shapes(l, prev):
    quad = SAIRConfig()
    lin = with_ablation(quad, "linear_penalty")
    o = Outcome(l, 1.0, 10.0)
    v = min(max(0.0, l / SLA - 1), 1.0)
    assert math.isclose(run(quad, ParetoFrontier(), o, prev).p_sla, v * v, abs_tol=1e-12)
    assert math.isclose(run(lin, ParetoFrontier(), o, prev).p_sla, v, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(history, outcome, outcome, st.floats(0.01, 5), st.floats(0, 10))
def test_no_bonus_ablation_never_pays_a_bonus(hist, o, prev, v_prev, up):
    cfg = with_ablation(SAIRConfig(), "no_bonus")
    assert run(cfg, frontier_of(hist), o, prev, v_prev, up).b_pro == 0


@pytest.mark.parametrize("abl,wl,wc", [("full", 0.7, 0.3), ("equal_weights", 0.5, 0.5),
                                       ("cost_focus", 0.3, 0.7)])
def test_weight_ablations_weigh_latency_and_cost_and_distance(abl, wl, wc):
    cfg = with_ablation(SAIRConfig(), abl)
    front = frontier_of([(0.0, 0.0)])  # z = (0, 0) dominates everything
    prev = Outcome(400.0, 5.0, 10.0)
    r = run(cfg, front, Outcome(200.0, 6.0, 10.0), prev)
    assert math.isclose(r.r_lat, 0.5) and math.isclose(r.r_cost, -0.2)
    assert math.isclose(r.frontier_distance, math.sqrt(wl * 0.2**2 + wc * 0.6**2))
    expected = wl * 0.5 + wc * -0.2 - 0.0 + (-0.1 - 0.9 * r.frontier_distance)
    assert math.isclose(r.total, expected)


def test_bonus_needs_violation_and_improvement_and_scales_with_capacity():
    cfg = SAIRConfig()
    prev = Outcome(1000.0, 5.0, 10.0)  # v_prev = 1 at SLA 500
    better, worse = Outcome(800.0, 6.0, 10.0), Outcome(1100.0, 6.0, 10.0)
    f = ParetoFrontier()
    assert math.isclose(run(cfg, f, better, prev, 1.0, 3.0).b_pro, 0.2)
    assert math.isclose(run(cfg, f, better, prev, 1.0, 1.5).b_pro, 0.1)
    assert run(cfg, f, worse, prev, 1.0, 3.0).b_pro == 0
    assert run(cfg, f, better, prev, 0.0, 3.0).b_pro == 0


def test_capacity_added_counts_scale_ups_only_and_caps_each_stage():
    v = SAIRConfig().validator
    a = Action({"pre": StageDelta(replicas=2, cpu_m=500), "inf": StageDelta(rate=0.1),
                "post": StageDelta(replicas=-2)})
    assert math.isclose(capacity_added(a, v), 1.0 + 0.5 + 0.0)


def test_missing_latency_is_the_worst_outcome_not_a_crash():
    r = run(SAIRConfig(), ParetoFrontier(), Outcome(float("nan"), 1.0, 5.0), None)
    assert r.violation == 1.0 and r.p_sla == 1.0 and r.z[0] == 1.0


def test_model_keeps_frontier_per_bucket():
    m = RewardModel(SAIRConfig().reward, sla_ms=SLA, c_max=C_MAX)
    quiet = m.compute(Outcome(100, 1.0, 2.0), None, v_prev=0, up_sum=0, n_stages=3)
    busy = m.compute(Outcome(400, 5.0, 200.0), None, v_prev=0, up_sum=0, n_stages=3)
    assert not quiet.dominated and not busy.dominated  # different buckets
    again = m.compute(Outcome(450, 6.0, 200.0), None, v_prev=0, up_sum=0, n_stages=3)
    assert again.dominated
    g = RewardModel(with_ablation(SAIRConfig(), "global_frontier").reward, sla_ms=SLA,
                    c_max=C_MAX)
    g.compute(Outcome(100, 1.0, 2.0), None, v_prev=0, up_sum=0, n_stages=3)
    assert g.compute(Outcome(400, 5.0, 200.0), None, v_prev=0, up_sum=0,
                     n_stages=3).dominated

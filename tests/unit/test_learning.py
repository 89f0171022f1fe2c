"""Memory that corrects the rule (docs/algorithm.md §10): the outcome table, headroom,
give-back, directed probes and periodic foresight, as pure functions of their inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sair_ray.bottleneck import analyse
from sair_ray.config import ABLATIONS, LearningConfig, SAIRConfig, ValidatorConfig
from sair_ray.cost import CostModel
from sair_ray.foresight import detect_period, forecast
from sair_ray.learning import Learner, OutcomeTable, bucket, key, level, to_proposal
from sair_ray.proposal import hold, scale_replicas, targets
from sair_ray.types import Action, ClusterResources, StageAllocation, StageDelta
from sair_ray.validator import Validator
from tests.factories import context, pipeline

P = pipeline(cluster=ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=4), sla_ms=500.0)
V = ValidatorConfig()
COST = CostModel(P, SAIRConfig().cost)
CFG = LearningConfig(foresight=True)


def alloc(gpu_replicas: int = 2, rate: float = 1.0, pre: int = 2) -> dict[str, StageAllocation]:
    return {"preprocess": StageAllocation(pre, 1000, 1024),
            "inference": StageAllocation(gpu_replicas, 2000, 4096, rate),
            "postprocess": StageAllocation(1, 1000, 1024)}


def learner(cfg: LearningConfig = CFG) -> Learner:
    return Learner(P, cfg, V, 30.0, lambda a: COST.rate(a, effective=True))


def resolver(ctx):  # noqa: ANN001, ANN202 - test helper
    v = Validator(P, V)
    free = ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=4)
    return lambda prop: v.validate(prop, ctx.allocation, now=ctx.time, free=free).targets


def window(t: float, a: dict[str, StageAllocation], p99: float, arrival: float = 20.0,
           util: float = 0.4):
    ctx = context(P, time=t, p99=p99, arrival=arrival, alloc=a,
                  util={"preprocess": util, "inference": util, "postprocess": 0.1})
    return ctx.__class__(**{**ctx.__dict__, "cost_rate": COST.rate(a, effective=True)})


def feed(lr: Learner, a: dict[str, StageAllocation], p99s: list[float], t0: float = 0.0,
         arrival: float = 20.0, util: float = 0.4) -> float:
    t = t0
    for p99 in p99s:
        t += 30.0
        ctx = window(t, a, p99, arrival, util)
        lr.observe(None, Action(), ctx, analyse(ctx, P))
    return t


# -- the outcome table ------------------------------------------------------------------
def test_bucket_and_level() -> None:
    assert bucket(20.0, 1.5) == bucket(21.0, 1.5)
    assert bucket(20.0, 1.5) < bucket(40.0, 1.5)
    assert bucket(0.0, 1.5) == bucket(1e-3, 1.5)
    assert level(StageAllocation(2, 1000, 1024, 0.5), gpu=True) == 1.0
    assert level(StageAllocation(2, 1500, 1024), gpu=False) == 3.0


def test_known_good_needs_n_min_windows_and_few_misses() -> None:
    t = OutcomeTable(P.stage_names)
    gpu = {s.name: s.is_gpu for s in P.stages}
    a = alloc()
    for _ in range(2):
        t.record(0, a, gpu, True, False, 5.0, [])
    assert not t.good(0, a, 3, 0.05)
    t.record(0, a, gpu, True, False, 5.0, [])
    assert t.good(0, a, 3, 0.05)
    t.record(0, a, gpu, False, True, 5.0, ["inference"])   # 1 of 4 missed: 25 %
    assert not t.good(0, a, 3, 0.05)
    assert t.cheapest_good(0, 3, 0.05) is None


def test_cheapest_good_picks_the_cheapest() -> None:
    t = OutcomeTable(P.stage_names)
    gpu = {s.name: s.is_gpu for s in P.stages}
    for a, cost in ((alloc(2), 6.0), (alloc(1), 3.0)):
        for _ in range(3):
            t.record(0, a, gpu, True, False, cost, [])
    best = t.cheapest_good(0, 3, 0.05)
    assert best is not None and best[0] == key(alloc(1), P.stage_names)


# -- corrections --------------------------------------------------------------------------
def test_headroom_vetoes_a_scale_down_to_a_level_that_failed_at_this_load() -> None:
    lr = learner()
    # one replica of inference missed the SLA at this load, blamed on inference (saturated)
    t = 0.0
    for p99 in (400.0, 2000.0, 300.0):
        t += 30
        ctx = window(t, alloc(1), p99, util=0.95)
        lr.observe(None, Action(), ctx, analyse(ctx, P))
    now = window(t + 30, alloc(2), 200.0)
    proposal = {"preprocess": hold(), "inference": scale_replicas(1), "postprocess": hold()}
    out, note = lr.correct(now, proposal, resolver(now), [])
    assert "keep inference" in note
    assert resolver(now)(out)["inference"].replicas == 2
    # a lower rate on one replica is less capacity still: vetoed too
    out, note = lr.correct(now, {"inference": targets(replicas=1, rate=0.8)}, resolver(now), [])
    assert resolver(now)(out)["inference"].replicas == 2


def test_no_veto_without_a_failure_at_this_load() -> None:
    lr = learner()
    feed(lr, alloc(1), [2000.0], arrival=200.0, util=0.95)   # a failure at 10x the load
    now = window(1000, alloc(2), 200.0)
    proposal = {"inference": scale_replicas(1)}
    out, note = lr.correct(now, proposal, resolver(now), [])
    assert note == "" and out == proposal


def test_give_back_proposes_the_cheapest_known_good_allocation() -> None:
    lr = learner()
    t = feed(lr, alloc(1), [200.0] * 3)
    t = feed(lr, alloc(2), [150.0] * 3, t0=t)
    now = window(t + 30, alloc(2), 150.0)
    history = [window(t - 30 * i, alloc(2), 150.0) for i in range(5)]
    out, note = lr.correct(now, {"inference": hold()}, resolver(now), history)
    assert note.startswith("give-back")
    assert resolver(now)(out)["inference"].replicas == 1
    # not while a higher load was seen in the last steady_s (a burst between spikes)
    spiky = history + [window(t - 200, alloc(2), 150.0, arrival=60.0)]
    out, note = lr.correct(now, {"inference": hold()}, resolver(now), spiky)
    assert not note.startswith("give-back")


def test_known_good_holds_back_a_scale_up_while_the_sla_is_met() -> None:
    lr = learner()
    t = feed(lr, alloc(1), [200.0] * 3)
    now = window(t + 30, alloc(1), 200.0)
    out, note = lr.correct(now, {"inference": scale_replicas(2)}, resolver(now), [])
    assert "known good" in note and resolver(now)(out)["inference"].replicas == 1
    # a window missing the SLA lets the scale-up through
    bad = window(t + 30, alloc(1), 900.0)
    out, note = lr.correct(bad, {"inference": scale_replicas(2)}, resolver(bad), [])
    assert resolver(bad)(out)["inference"].replicas == 2


def test_known_good_does_not_hold_back_a_scale_up_while_the_load_rises() -> None:
    # 18 req/s, then 24: one load bucket (1.5^7 = 17.1 to 25.6), a third more work
    lr = learner()
    assert bucket(18.0, CFG.bucket_base) == bucket(24.0, CFG.bucket_base)
    t = feed(lr, alloc(1), [200.0] * 6, arrival=18.0)
    t = feed(lr, alloc(1), [200.0] * 6, t0=t, arrival=24.0)
    now = window(t + 30, alloc(1), 200.0, arrival=24.0)
    out, note = lr.correct(now, {"inference": scale_replicas(2)}, resolver(now), [])
    assert "known good" not in note and resolver(now)(out)["inference"].replicas == 2
    # once it levels off, the memory holds again
    t = feed(lr, alloc(1), [200.0] * 6, t0=t, arrival=24.0)
    now = window(t + 30, alloc(1), 200.0, arrival=24.0)
    out, note = lr.correct(now, {"inference": scale_replicas(2)}, resolver(now), [])
    assert "known good" in note


def test_directed_probe_only_reduces_and_only_with_slack() -> None:
    lr = learner()
    t = feed(lr, alloc(2), [150.0] * 8, util=0.2)
    now = window(t + 30, alloc(2), 150.0, util=0.2)
    prop = lr.probe(now, resolver(now), [])
    assert prop is not None
    tgt = resolver(now)(prop)
    assert COST.rate(tgt) < COST.rate(now.allocation)
    assert all(level(tgt[s], g) <= level(now.allocation[s], g) + 1e-9
               for s, g in lr.gpu.items())
    # no probe when p99 is near the SLA, or the stage would run hot
    assert lr.probe(window(t + 30, alloc(2), 450.0, util=0.2), resolver(now), []) is None
    hot = window(t + 30, alloc(2), 150.0, util=0.8)
    hot_prop = lr.probe(hot, resolver(hot), [])
    assert hot_prop is None or all(
        resolver(hot)(hot_prop)[s] == hot.allocation[s] for s in ("inference", "preprocess"))


def test_no_learner_without_episodes() -> None:
    """retrieval.K = 0 (the no_icl ablation) switches the §10 corrections off too."""
    from sair_ray.backends.sim import SimBackend
    from sair_ray.controller import Controller
    from sair_ray.memory import ExperienceMemory
    from sair_ray.policy.retrieval_only import RetrievalOnlyPolicy

    be = SimBackend("nlp_analysis", seed=0)
    for changes, expect in ((ABLATIONS["full"], True),     # on by default
                            (ABLATIONS["no_icl"], False),
                            (ABLATIONS["no_learning"], False)):
        cfg = SAIRConfig().replace(**changes)
        ablation = changes
        mem = ExperienceMemory.__new__(ExperienceMemory)  # never touched: only not None
        ctl = Controller(be, RetrievalOnlyPolicy(cfg.validator), cfg, memory=mem)
        assert (ctl.learner is not None) is expect, ablation


# -- foresight ------------------------------------------------------------------------------
def square(n: int, period: int = 20, spike: int = 4, base: float = 10.0, peak: float = 40.0,
           noise: float = 1.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [(peak if i % period < spike else base) + rng.normal(0, noise) for i in range(n)]


def test_period_of_a_noisy_square_burst() -> None:
    p, acf = detect_period(square(80))
    assert p == 20 and acf > 0.5


@pytest.mark.parametrize("series", [
    list(np.random.default_rng(1).poisson(50, 120).astype(float)),        # steady
    [10 + 0.5 * i + float(np.random.default_rng(2).normal()) for i in range(120)],  # ramp
])
def test_no_confident_period_without_one(series: list[float]) -> None:
    f = forecast([30.0 * i for i in range(len(series))], series, CFG)
    assert f is None or not f.confident(CFG)


def test_forecast_predicts_the_next_spike() -> None:
    rates = square(70)          # 3.5 periods: the next spike starts at round 80
    times = [30.0 * i for i in range(len(rates))]
    f = forecast(times, rates, CFG)
    assert f is not None and f.confident(CFG)
    assert f.period_s == pytest.approx(600.0)
    now = times[-1]            # round 69
    assert f.next_spike(now) == pytest.approx(30.0 * 80)
    assert f.peak_within(now, 120.0) < 20          # rounds 70-73: base
    assert f.peak_within(30.0 * 77, 120.0) > 30    # rounds 78-81 include the spike
    assert f.in_spike(30.0 * 81) and not f.in_spike(30.0 * 85)


def test_a_broken_pattern_falls_back_to_reactive() -> None:
    rates = square(60) + [10.0 + float(x) for x in np.random.default_rng(3).normal(0, 1, 25)]
    times = [30.0 * i for i in range(len(rates))]
    f = forecast(times, rates, CFG)
    assert f is None or not f.confident(CFG)


def test_prescale_before_a_predicted_spike_and_not_after_the_pattern_breaks() -> None:
    lr = learner()
    t = 0.0
    rates = square(75)
    for i, r in enumerate(rates):
        t = 30.0 * i
        spike = i % 20 < 4
        a = alloc(3 if spike else 1)
        ctx = window(t, a, 200.0, arrival=r)
        lr.observe(None, Action(), ctx, analyse(ctx, P))
    assert lr.forecast is not None and lr.forecast.confident(CFG)
    # round 76 (t = 2280): the next spike starts at round 80, within lead_s = 120 s
    now = window(30.0 * 76, alloc(1), 150.0, arrival=10.0)
    out, note = lr.correct(now, {"inference": hold()}, resolver(now), [])
    assert note.startswith("foresight")
    assert resolver(now)(out)["inference"].replicas == 3
    # the spikes stop: confidence falls and the learner stops pre-scaling
    for i in range(76, 130):
        ctx = window(30.0 * i, alloc(1), 200.0, arrival=10.0 + math.sin(i))
        lr.observe(None, Action(), ctx, analyse(ctx, P))
    assert lr.forecast is None or not lr.forecast.confident(CFG)
    now = window(30.0 * 136, alloc(1), 150.0, arrival=10.0)
    _, note = lr.correct(now, {"inference": hold()}, resolver(now), [])
    assert not note.startswith("foresight")


def test_window_after_a_scale_up_is_charged_to_the_allocation_before() -> None:
    lr = learner()
    before = window(0.0, alloc(1), 200.0)
    after = window(30.0, alloc(2), 2000.0)
    up = Action({"inference": StageDelta(replicas=1)})
    lr.observe(before, up, after, analyse(after, P))
    assert lr.table.alloc_counts(bucket(20.0, CFG.bucket_base), alloc(1)).fail == 1
    assert lr.table.alloc_counts(bucket(20.0, CFG.bucket_base), alloc(2)).n == 0


def test_a_backlog_from_before_that_the_window_cleared_is_not_its_miss() -> None:
    # one inference replica let 80 requests queue; two cleared them within the next window,
    # whose p99 is the backlog's wait: not a miss of two replicas (charged to them, two
    # would have been kept for good at this load: a scale-down below them vetoed)
    lr = learner()
    b = bucket(20.0, CFG.bucket_base)
    ctx = window(0.0, alloc(2), 2000.0)
    backlog = ctx.__class__(**{**ctx.__dict__, "stages": tuple(
        s.__class__(**{**s.__dict__, "queue": 80.0}) if s.name == "inference" else s
        for s in ctx.stages)})
    cleared = window(30.0, alloc(2), 2000.0)
    lr.observe(backlog, Action(), cleared, analyse(cleared, P))
    assert lr.table.alloc_counts(b, alloc(2)).n == 0
    # a miss that leaves requests waiting is the allocation's own
    still = backlog.__class__(**{**backlog.__dict__, "time": 60.0})
    lr.observe(backlog, Action(), still, analyse(still, P))
    assert lr.table.alloc_counts(b, alloc(2)).fail == 1


def test_hints_and_to_proposal() -> None:
    lr = learner()
    t = feed(lr, alloc(1), [200.0] * 3)
    now = window(t + 30, alloc(2), 150.0)
    h = lr.hints(now)
    assert any("Cheapest allocation" in line for line in h.lines)
    assert h.candidates and h.candidates[0][0] == "memory"
    prop = to_proposal(P, alloc(2), alloc(1))
    assert prop["preprocess"] == hold()
    assert resolver(now)(prop)["inference"].replicas == 1


def test_the_llm_prompt_shows_what_the_memory_knows() -> None:
    from sair_ray.learning import Hints
    from sair_ray.policy.base import PolicyRequest
    from sair_ray.policy.llm import LLMPolicy

    pol = LLMPolicy(SAIRConfig(), P)
    ctx = window(30.0, alloc(2), 150.0)
    req = PolicyRequest(now=30.0, context=ctx, pipeline=P, free=ClusterResources(8, 8192, 1))
    assert "Memory at this load" not in pol.inputs(req)["current_input"]
    lr = learner()
    t = feed(lr, alloc(1), [200.0] * 3)
    pol.learned = lr.hints(window(t + 30, alloc(2), 150.0))
    text = pol.inputs(req)["current_input"]
    assert "Cheapest allocation that met the SLA at this load" in text
    assert isinstance(pol.learned, Hints) and pol.learned.candidates[0][0] == "memory"

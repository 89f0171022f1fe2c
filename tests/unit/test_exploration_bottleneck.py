from __future__ import annotations

import numpy as np

from sair_ray.bottleneck import analyse
from sair_ray.config import SAIRConfig
from sair_ray.exploration import EpsilonSchedule, probe, step_grid
from sair_ray.validator import Validator
from tests.factories import context, pipeline

CFG = SAIRConfig()


def test_epsilon_decays_to_its_floor():
    s = EpsilonSchedule(CFG.exploration)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(100):
        seen.append(s.epsilon)
        s.draw(rng)
    assert seen[0] == 0.15 and np.isclose(seen[1], 0.15 * 0.95)
    assert s.epsilon == 0.05 and min(seen) == 0.05


def test_probe_rate_follows_epsilon():
    rng = np.random.default_rng(1)
    cfg = CFG.replace(**{"exploration.epsilon_decay": 1.0, "exploration.epsilon_0": 0.3})
    s = EpsilonSchedule(cfg.exploration)
    hits = sum(s.draw(rng) for _ in range(4000))
    assert 0.27 < hits / 4000 < 0.33


def test_probes_move_one_dimension_of_one_stage_by_a_grid_step():
    p = pipeline()
    cur = p.initial_allocation()
    rng = np.random.default_rng(2)
    seen = set()
    val = Validator(p, CFG.validator)
    for _ in range(300):
        prop = probe(p, cur, CFG.validator, rng)
        ((stage, entry),) = prop.items()
        fields = [k for k in entry if k != "action"]
        assert len(fields) == 1
        seen.add((stage, fields[0]))
        attr = {"replicas": "replicas", "cpu_millicores": "cpu_m", "memory_mb": "mem_mb",
                "rate_ratio": "rate"}[fields[0]]
        step = entry[fields[0]] - getattr(cur[stage], attr)
        dim = {"cpu_m": "cpu_m", "mem_mb": "mem_mb", "rate": "rate"}.get(attr, "replicas")
        assert any(np.isclose(step, g) for g in step_grid(dim, CFG.validator))
        val.validate(prop, cur, now=0, free=p.cluster)
    assert ("inference", "rate_ratio") in seen and ("preprocess", "memory_mb") in seen
    assert ("inference", "cpu_millicores") not in seen


def test_single_bottleneck_is_named():
    p = pipeline()
    ctx = context(p, util={"preprocess": 0.97, "inference": 0.4, "postprocess": 0.2},
                  queue={"preprocess": 60}, stage_p99={"preprocess": 300})
    r = analyse(ctx, p)
    assert r.label == "preprocess" and r.stages == ("preprocess",)


def test_migrating_bottleneck_and_queue_growth():
    p = pipeline()
    before = context(p, time=0, util={"inference": 0.8}, queue={"inference": 5})
    after = context(p, time=30, util={"inference": 0.8}, queue={"inference": 200},
                    stage_p99={"inference": 400})
    r = analyse(after, p, before)
    assert r.label == "inference"
    assert next(s for s in r.symptoms if s.stage == "inference").growth > 0.05


def test_one_request_more_waiting_is_no_queue_growth():
    # a stage of a few requests per window, a third busy: one request arriving while its
    # replicas are all busy is no queue growing (live video_analysis ramp: decode read
    # "overloaded" on that and got two replicas more, given back the next round)
    p = pipeline()
    before = context(p, time=0, arrival=0.4, throughput=0.3, util={"preprocess": 0.3})
    one = context(p, time=15, arrival=0.4, throughput=0.3, util={"preprocess": 0.3},
                  queue={"preprocess": 1})
    r = analyse(one, p, before)
    assert next(s for s in r.symptoms if s.stage == "preprocess").growth == 0.0
    assert r.label == "none"
    # two more are: 2 / 15 s over 0.3 req/s passed
    two = context(p, time=15, arrival=0.4, throughput=0.3, util={"preprocess": 0.3},
                  queue={"preprocess": 2})
    grew = next(s for s in analyse(two, p, before).symptoms if s.stage == "preprocess")
    assert grew.growth > 0.05 and grew.saturated


def test_multiple_and_none():
    p = pipeline()
    both = context(p, util={"preprocess": 1.2, "inference": 1.2},
                   queue={"preprocess": 100, "inference": 100},
                   stage_p99={"preprocess": 200, "inference": 200})
    r = analyse(both, p)
    assert r.label == "multiple" and set(r.stages) == {"preprocess", "inference"}
    calm = context(p, p99=100, util={"preprocess": 0.3, "inference": 0.3, "postprocess": 0.3})
    assert analyse(calm, p).label == "none"
    slow = context(p, p99=900, util={"preprocess": 0.3, "inference": 0.3, "postprocess": 0.3},
                   stage_p99={"postprocess": 700})
    assert analyse(slow, p).label == "postprocess"


def _flows(p, arrival, out, **kw):
    """A context whose stages pass on `out[stage]` requests per second."""
    from dataclasses import replace

    ctx = context(p, arrival=arrival, **kw)
    return replace(ctx, stages=tuple(replace(s, throughput_rps=out[s.name])
                                     for s in ctx.stages))


def test_a_downstream_stage_falling_behind_is_a_co_bottleneck():
    # preprocess passes on 80 of 140 req/s (full queue: drops), inference 60 of those 80:
    # inference's queue is short next to preprocess's, but it is overloaded too.
    p = pipeline()
    ctx = _flows(p, 140.0, {"preprocess": 80.0, "inference": 60.0, "postprocess": 60.0},
                 util={"preprocess": 0.6, "inference": 1.0, "postprocess": 0.3},
                 queue={"preprocess": 1000, "inference": 40},
                 stage_p99={"preprocess": 60, "inference": 15, "postprocess": 3})
    r = analyse(ctx, p)
    assert r.label == "multiple" and r.stages == ("preprocess", "inference")
    assert "passes on 57% of its input" in r.reason
    deficits = {s.stage: round(s.deficit, 2) for s in r.symptoms}
    assert deficits == {"preprocess": 0.43, "inference": 0.25, "postprocess": 0.0}


def test_a_busy_stage_that_keeps_up_is_not_overloaded():
    # a batching encoder looks busy (util 1.0) but passes on everything it receives; only
    # preprocess, which falls behind, is the bottleneck
    p = pipeline()
    ctx = _flows(p, 100.0, {"preprocess": 70.0, "inference": 70.0, "postprocess": 70.0},
                 util={"preprocess": 0.95, "inference": 1.0, "postprocess": 0.2},
                 queue={"preprocess": 500, "inference": 5})
    r = analyse(ctx, p)
    assert r.label == "preprocess" and r.stages == ("preprocess",)


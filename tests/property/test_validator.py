"""The validator is total: any JSON-ish input yields a feasible action and never raises."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.config import SAIRConfig
from sair_ray.types import ClusterResources, StageAllocation
from sair_ray.validator import Cooldowns, Validator, is_feasible
from tests.factories import pipeline

V = SAIRConfig().validator
P = pipeline()
STAGES = list(P.stage_names)
FIELDS = ["action", "replicas", "cpu_millicores", "memory_mb", "rate_ratio"]
VERBS = ["none", "scale_replicas", "scale_resources", "scale_both", "adjust_rate", "explode"]

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["3", "1e400", "nan", "-inf", " 2 ", "0x10", ""]), st.sampled_from(VERBS))
jsonish = st.recursive(scalar, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=12)
stage_entry = st.one_of(jsonish, st.dictionaries(st.sampled_from(FIELDS), jsonish, max_size=5))
proposal = st.one_of(
    jsonish,
    st.dictionaries(st.one_of(st.sampled_from(STAGES + ["ghost", ""]), st.text(max_size=6)),
                    stage_entry, max_size=5))


def feasible_alloc(draw_stage):
    return st.builds(StageAllocation, st.integers(V.replicas_min, V.replicas_max),
                     st.integers(250, 4000), st.integers(256, 8192),
                     st.floats(V.rate_min, V.rate_max) if draw_stage.is_gpu else st.just(1.0))


current = st.fixed_dictionaries({s.name: feasible_alloc(s) for s in P.stages})
free = st.builds(ClusterResources, st.floats(0, 64), st.floats(0, 65536), st.floats(0, 4))
cooldowns = st.builds(Cooldowns,
                      st.dictionaries(st.sampled_from(STAGES), st.floats(-500, 100)),
                      st.dictionaries(st.sampled_from(STAGES), st.floats(-500, 100)))


def used(alloc, stage):
    spec = P.stage(stage)
    g = alloc.replicas * spec.gpus_per_replica if spec.is_gpu else 0.0
    return alloc.replicas * alloc.cpu_m, alloc.replicas * alloc.mem_mb, g


@settings(max_examples=500, deadline=None)
@given(proposal, current, free, cooldowns, st.floats(0, 1000))
def test_any_input_gives_a_feasible_action(prop, cur, fr, cds, now):
    val = Validator(P, V, cds)
    out = val.validate(prop, cur, now=now, free=fr)
    extra = [0.0, 0.0, 0.0]
    for name, spec in zip(P.stage_names, P.stages, strict=True):
        d, t, c = out.action.delta(name), out.targets[name], cur[name]
        assert is_feasible(t, spec.limits(V))
        assert abs(d.replicas) <= V.max_replica_step and abs(d.cpu_m) <= V.max_cpu_step_m
        assert abs(d.mem_mb) <= V.max_mem_step_mb and abs(d.rate) <= V.max_rate_step + 1e-9
        assert all(math.isfinite(x) for x in (d.replicas, d.cpu_m, d.mem_mb, d.rate))
        assert t == d.apply(c)
        if spec.is_gpu:
            assert d.cpu_m == 0 and d.mem_mb == 0
        else:
            assert d.rate == 0
        if cds.blocks(name, 1, now, V):
            assert max(d.replicas, d.cpu_m, d.mem_mb, d.rate) <= 0
        if cds.blocks(name, -1, now, V):
            assert min(d.replicas, d.cpu_m, d.mem_mb, d.rate) >= 0
        for i, (a, b) in enumerate(zip(used(t, name), used(c, name), strict=True)):
            extra[i] += max(0.0, a - b)
    assert extra[0] <= fr.cpus * 1000 + 1e-6
    assert extra[1] <= fr.memory_mb + 1e-6
    assert extra[2] <= fr.gpus + 1e-9

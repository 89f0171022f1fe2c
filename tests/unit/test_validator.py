from __future__ import annotations

from sair_ray.config import SAIRConfig
from sair_ray.types import Action, ClusterResources, StageAllocation, StageDelta
from sair_ray.validator import Validator
from tests.factories import pipeline

V = SAIRConfig().validator
BIG = ClusterResources(64, 262144, 4)
CUR = {"preprocess": StageAllocation(2, 1000, 1024), "inference": StageAllocation(1, 2000, 4096,
                                                                                    0.5),
       "postprocess": StageAllocation(1, 500, 512)}


def validate(prop, now=0.0, free=BIG, val=None):
    return (val or Validator(pipeline(), V)).validate(prop, CUR, now=now, free=free)


def test_absolute_targets_become_deltas():
    out = validate({"preprocess": {"action": "scale_both", "replicas": 3,
                                   "cpu_millicores": 1200, "memory_mb": 1024},
                    "inference": {"action": "adjust_rate", "rate_ratio": 0.6}})
    assert out.action.delta("preprocess") == StageDelta(1, 200, 0, 0.0)
    assert out.action.delta("inference") == StageDelta(rate=0.1)
    assert out.targets["preprocess"] == StageAllocation(3, 1200, 1024)
    assert not out.clamps


def test_steps_and_ranges_are_clamped_and_reported():
    out = validate({"preprocess": {"action": "scale_both", "replicas": 2e15,
                                   "cpu_millicores": 50, "memory_mb": "4096"},
                    "inference": {"action": "adjust_rate", "rate_ratio": 0.0}})
    assert out.action.delta("preprocess") == StageDelta(2, -500, 256, 0.0)
    assert out.targets["inference"].rate == 0.3  # 0.5 - max step 0.2, not down to 0.1
    reasons = " ".join(c.reason for c in out.clamps)
    assert "outside [1, 8]" in reasons and "exceeds max step" in reasons


def test_verbs_select_dimensions_and_kinds():
    out = validate({"preprocess": {"action": "scale_replicas", "replicas": 3,
                                   "cpu_millicores": 2000},
                    "inference": {"action": "scale_resources", "cpu_millicores": 4000},
                    "postprocess": {"action": "none", "replicas": 5}})
    assert out.action.delta("preprocess") == StageDelta(replicas=1)
    assert out.action.delta("inference").is_noop and out.action.delta("postprocess").is_noop
    assert any("does not apply to a gpu stage" in c.reason for c in out.clamps)


def test_garbage_is_a_reported_noop():
    for junk in ["scale everything!", 42, [1, 2], {"ghost": {"replicas": 3}},
                 {"preprocess": "more"}, {"preprocess": {"replicas": float("nan")}}]:
        out = validate(junk)
        assert out.action.is_noop
        assert out.clamps


def test_cooldowns_per_stage_and_direction():
    val = Validator(pipeline(), V)
    up = {"preprocess": {"action": "scale_replicas", "replicas": 3}}
    first = validate(up, now=0.0, val=val)
    val.commit(first.action, 0.0)
    assert validate(up, now=59.0, val=val).action.is_noop
    assert not validate(up, now=60.0, val=val).action.is_noop
    other = {"postprocess": {"action": "scale_replicas", "replicas": 2}}
    assert not validate(other, now=1.0, val=val).action.is_noop
    down = {"preprocess": {"action": "scale_replicas", "replicas": 1}}
    assert not validate(down, now=1.0, val=val).action.is_noop  # a down is not an up
    val.commit(Action({"preprocess": StageDelta(replicas=-1)}), 10.0)
    assert validate(down, now=129.0, val=val).action.is_noop
    assert not validate(down, now=130.0, val=val).action.is_noop


def test_a_round_due_when_the_cooldown_ends_is_not_refused_for_clock_jitter():
    # A cooldown equal to the decision interval (the demo's 15 s / 15 s) must admit the
    # next round even when the clock reads it microseconds early.
    v = SAIRConfig().replace(**{"validator.cooldown_up_s": 15.0,
                                "validator.cooldown_down_s": 15.0}).validator
    val = Validator(pipeline(), v)
    up = {"preprocess": {"action": "scale_replicas", "replicas": 3}}
    val.commit(validate(up, now=100.0, val=val).action, 100.0)
    assert not validate(up, now=114.999993, val=val).action.is_noop
    assert validate(up, now=114.0, val=val).action.is_noop
    down = {"preprocess": {"action": "scale_replicas", "replicas": 1}}
    val.commit(Action({"preprocess": StageDelta(replicas=-1)}), 200.0)
    assert not validate(down, now=214.99, val=val).action.is_noop
    assert validate(down, now=214.0, val=val).action.is_noop


def test_cluster_limits_cut_scale_ups_in_pipeline_order():
    free = ClusterResources(cpus=1.5, memory_mb=100000, gpus=0)
    out = validate({"preprocess": {"action": "scale_replicas", "replicas": 4},
                    "inference": {"action": "scale_replicas", "replicas": 2},
                    "postprocess": {"action": "scale_replicas", "replicas": 3}}, free=free)
    assert out.action.delta("preprocess").replicas == 1   # 1000 m of the 1500 m free
    assert out.action.delta("inference").replicas == 0   # no free GPU
    assert out.action.delta("postprocess").replicas == 1  # the remaining 500 m
    assert any(c.field == "cluster" for c in out.clamps)


def test_cluster_limits_shrink_a_cpu_increase_to_what_fits():
    free = ClusterResources(cpus=0.5, memory_mb=100000, gpus=0)
    out = validate({"preprocess": {"action": "scale_resources", "cpu_millicores": 1500}},
                   free=free)
    assert out.action.delta("preprocess").cpu_m == 250  # 2 replicas x 250 m = 500 m

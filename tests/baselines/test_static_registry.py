"""Static, the registry, and that every baseline is a Policy whose proposals validate."""

from __future__ import annotations

import pytest

from sair_ray.baselines import BASELINES, Static, make_baseline
from sair_ray.baselines.vpa import VPA
from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import Policy
from sair_ray.sim.profiles import load_profile
from sair_ray.validator import Validator
from tests.baselines.helpers import alloc, request
from tests.factories import pipeline


def test_static_holds_one_replica_per_stage():
    p = pipeline()
    r = request(0, p, alloc={"preprocess": alloc(3), "inference": alloc(1, 2000, 4096),
                             "postprocess": alloc(1)})
    prop = Static().decide(r).proposal
    assert prop == {"preprocess": {"action": "scale_replicas", "replicas": 1},
                    "inference": {"action": "none"}, "postprocess": {"action": "none"}}


def _make(name: str):
    prof = load_profile("image_classification")
    kw = {"profile": prof, "workload": prof.default_workload()} if name == "oracle" else (
        {"profile": prof} if name == "vpa" else {})
    return prof, make_baseline(name, **kw)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_is_a_policy_with_valid_proposals(name):
    prof, policy = _make(name)
    assert isinstance(policy, Policy) and policy.name == name
    p = prof.pipeline
    r = request(0, p, util={"preprocess": 1.5, "inference": 0.2, "postprocess": 0.1},
                stage_p99={"preprocess": 900.0}, p99=1500.0, arrival=50.0)
    reply = policy.decide(r)
    v = Validator(p, ValidatorConfig())
    validated = v.validate(reply.proposal, r.context.allocation, now=0, free=r.free)
    # the validator may clamp steps, but never has to reject the shape of the proposal
    assert not [c for c in validated.clamps if c.field in ("proposal", "stage", "action")]
    assert reply.rationale


def test_registry_names_aliases_and_errors():
    assert make_baseline("HPA-CPU").name == "hpa"
    assert make_baseline("ray-serve").name == "ray_serve"
    assert make_baseline("threshold", cpu_p99_ms=50).cpu_p99_ms == 50
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("magic")
    with pytest.raises(ValueError, match="profile and workload"):
        make_baseline("oracle")
    vpa = make_baseline("vpa", profile=load_profile("video_analysis"))
    assert isinstance(vpa, VPA) and vpa.memory_need_mb["decode"] == 3072

"""Static, the registry, and that every baseline is a Policy whose proposals validate."""

from __future__ import annotations

import pytest

from sair_ray.baselines import Static
from sair_ray.baselines.vpa import VPA
from sair_ray.config import SAIRConfig, ValidatorConfig
from sair_ray.policy.base import Policy
from sair_ray.profiles import load_profile
from sair_ray.registry import BASELINES, POLICIES, PolicyError, get, get_live, make_policy
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
    return prof, make_policy(name, SAIRConfig(), pipeline=prof.pipeline, profile=prof,
                             workload=prof.default_workload())


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
    cfg, p = SAIRConfig(), pipeline()
    assert make_policy("HPA-CPU", cfg, pipeline=p).name == "hpa"
    assert make_policy("ray-serve", cfg, pipeline=p).name == "ray_serve"
    assert make_policy("threshold", cfg, pipeline=p, cpu_p99_ms=50).cpu_p99_ms == 50
    with pytest.raises(PolicyError, match="unknown policy 'magic'.*oracle"):
        make_policy("magic", cfg, pipeline=p)
    with pytest.raises(PolicyError, match="profile and workload"):
        make_policy("oracle", cfg, pipeline=p)
    prof = load_profile("video_analysis")
    vpa = make_policy("vpa", cfg, pipeline=prof.pipeline, profile=prof)
    assert isinstance(vpa, VPA) and vpa.memory_need_mb["decode"] == 3072


def test_registry_says_what_learns_and_where_it_runs():
    assert [n for n, p in POLICIES.items() if p.learns] == ["sair", "sair-retrieval"]
    assert "oracle" in BASELINES and get("oracle").simulator_only
    with pytest.raises(PolicyError, match="clairvoyant"):
        get_live("oracle")
    with pytest.raises(PolicyError, match="unknown policy 'magic'; choose one of sair,"):
        get_live("magic")
    assert get_live("HPA").name == "hpa" and not get_live("hpa").learns

"""The proposal vocabulary (sair_ray/proposal.py) is what the validator reads."""

from __future__ import annotations

from sair_ray import proposal as P
from sair_ray import validator
from sair_ray.config import ValidatorConfig
from sair_ray.types import ClusterResources
from sair_ray.validator import Validator
from tests.factories import pipeline

FREE = ClusterResources(1000, 1e7, 10)


def _validate(prop):
    p = pipeline()
    return Validator(p, ValidatorConfig()).validate(prop, p.initial_allocation(), now=0.0,
                                                    free=FREE)


def test_the_validator_reads_the_vocabulary_keys():
    assert validator.FIELDS is P.FIELDS and validator.VERBS is P.VERBS
    for e in (P.hold(), P.scale_replicas(2), P.resize(1500, 2048), P.resize(cpu_m=1500),
              P.scale_both(2, 1500, 2048), P.set_rate(0.8), P.targets(replicas=2, rate=0.8)):
        assert set(e) <= {P.ACTION, *P.FIELDS.values()}
        if P.ACTION in e:
            assert e[P.ACTION] in P.VERBS


def test_each_constructor_moves_what_it_says():
    gpu = next(s.name for s in pipeline().stages if s.is_gpu)
    cpu = next(s.name for s in pipeline().stages if not s.is_gpu)
    out = _validate({cpu: P.scale_both(2, 1500, 1280), gpu: P.targets(replicas=2, rate=0.8)})
    assert not out.clamps
    assert (out.targets[cpu].replicas, out.targets[cpu].cpu_m, out.targets[cpu].mem_mb) == \
        (2, 1500, 1280)
    assert (out.targets[gpu].replicas, out.targets[gpu].rate) == (2, 0.8)
    assert _validate({cpu: P.hold(), gpu: P.set_rate(0.8)}).action.delta(cpu).is_noop
    assert _validate({cpu: P.resize(mem_mb=1280)}).action.delta(cpu).cpu_m == 0


def test_replicas_to_holds_at_the_current_count():
    assert P.replicas_to(3, 3) == P.hold() and P.holds(P.hold())
    assert P.replicas_to(4, 3) == P.scale_replicas(4) and P.verb(P.scale_replicas(4)) == \
        "scale_replicas"

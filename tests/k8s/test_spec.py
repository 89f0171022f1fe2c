"""Reading a PipelineAutoscaler: defaults, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from sair_ray.operator.spec import AutoscalerSpec, AutoscalerSpecError
from sair_ray.types import StageAllocation, StageKind
from tests.k8s.helpers import sample


def parse(**changes: Any) -> AutoscalerSpec:
    pa = sample("pipelineautoscaler.yaml")
    pa["spec"].update(changes)
    return AutoscalerSpec.from_object(pa)


def test_sample_reads_as_written() -> None:
    s = parse()
    assert (s.namespace, s.name, s.rayservice_namespace, s.rayservice_name) == (
        "default", "imgcls", "default", "imgcls")
    inf = s.pipeline.stage("inference")
    assert inf.kind is StageKind.GPU and inf.replicas_max == 2
    assert inf.initial == StageAllocation(1, 2000, 4096, 1.0)
    assert s.config.policy.backend == "vllm" and s.config.loop.decision_interval_s == 30
    assert [b.serve_deployment for b in s.bindings] == ["preprocess", "inference", "postprocess"]
    assert s.metrics.source == "prometheus" and s.metrics.address == "prom"
    assert s.metrics.profile == "image_classification"


@pytest.mark.parametrize("changes, match", [
    ({"slaMs": "fast"}, r"default/imgcls: spec.slaMs: expected an integer or a number"),
    ({"stages": []}, r"spec.stages: needs at least one stage"),
    ({"stages": [{"name": "a", "kind": "tpu"}]}, r"spec.stages\[0\].kind: expected 'cpu' or"),
    ({"stages": [{"name": "a", "replicas": {"min": 3, "max": 1}}]},
     r"spec.stages\[0\]: stage 'a': replicas_min \(3\) > replicas_max \(1\)"),
    ({"stages": [{"name": "g", "kind": "gpu",
                  "kubernetesDeployment": {"name": "x", "container": "c"}}]},
     r"spec.stages\[0\]: a GPU stage's rate"),
    ({"config": {"reward": {"w_L": 2}}}, r"spec.config.reward.w_L: expected a number in"),
    ({"config": {"loop": {"decision_intervall_s": 3}}},
     r"spec.config.loop.decision_intervall_s: unknown key"),
    ({"metrics": {"source": "graphite"}}, r"spec.metrics.source: expected one of ray, "
                                          r"prometheus, simulator"),
    ({"metrics": {"source": "simulator"}}, r"spec.metrics.profile: required"),
    ({"rayService": {}}, r"spec.rayService.name: required"),
])
def test_errors_name_the_field(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(AutoscalerSpecError, match=match):
        parse(**changes)


def test_policy_endpoint_goes_into_the_config() -> None:
    s = parse(policy={"name": "sair", "backend": "openai", "url": "http://x/v1"},
              config={"policy": {"temperature": 0.5}})
    assert (s.config.policy.backend, s.config.policy.url, s.config.policy.temperature) == (
        "openai", "http://x/v1", 0.5)

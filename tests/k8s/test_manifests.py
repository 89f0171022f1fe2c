"""deploy/: the CRD's schema accepts the sample and agrees with what the operator reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from sair_ray.operator.spec import GROUP, KIND, PLURAL, VERSION, AutoscalerSpec
from tests.k8s.helpers import ROOT, sample

jsonschema = pytest.importorskip("jsonschema")


def crd() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "crd.yaml").read_text())


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (as in a CRD) -> JSON Schema draft 4: `nullable` becomes a null type,
    Kubernetes extensions are dropped (preserve-unknown-fields objects stay open)."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # structural schemas prune unknown fields
    return out


def validator() -> Any:
    version = crd()["spec"]["versions"][0]
    return jsonschema.Draft4Validator(as_json_schema(version["schema"]["openAPIV3Schema"]))


def test_crd_names_match_the_operator() -> None:
    c = crd()
    assert c["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (c["spec"]["group"], c["spec"]["names"]["kind"], c["spec"]["names"]["plural"]) == \
        (GROUP, KIND, PLURAL)
    version = c["spec"]["versions"][0]
    assert version["name"] == VERSION and version["subresources"] == {"status": {}}


def test_sample_satisfies_the_crd_and_the_operator() -> None:
    pa = sample("pipelineautoscaler.yaml")
    validator().validate(pa)
    spec = AutoscalerSpec.from_object(pa)
    assert spec.pipeline.stage_names == ("preprocess", "inference", "postprocess")
    assert spec.config.policy.url == "http://sair-policy.default.svc:8000/v1"


def test_status_the_operator_writes_satisfies_the_crd() -> None:
    pa = sample("pipelineautoscaler.yaml")
    pa["status"] = {"observedGeneration": 3, "rounds": 12, "lastRoundTime": "2026-01-01T00:00:00Z",
                    "error": "", "lastSource": "policy:hpa", "p99Ms": 812.5,
                    "lastAction": {"preprocess": {"replicas": 1}},
                    "lastPatch": ["serve:image_classification/preprocess num_replicas: 1 -> 2"]}
    validator().validate(pa)


@pytest.mark.parametrize("path, value", [
    (("spec", "policy", "backend"), "gpt"),
    (("spec", "stages", 0, "kind"), "tpu"),
    (("spec", "slaMs"), 0),
    (("spec", "typo"), 1),
])
def test_crd_rejects_bad_values(path: tuple[Any, ...], value: Any) -> None:
    pa = copy.deepcopy(sample("pipelineautoscaler.yaml"))
    node = pa
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(pa)

"""Shared helpers of the Kubernetes tests: sample manifests, waiting, reading state."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.apiserver import ApiError, ApiServer, Kind

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICES = Kind("ray.io", "v1", "rayservices")
AUTOSCALERS = Kind("sair-ray.io", "v1alpha1", "pipelineautoscalers")
DEPLOYMENTS = Kind("apps", "v1", "deployments")


def sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((ROOT / "deploy" / "samples" / name).read_text()))


def plain_deployment(name: str = "post", *, replicas: int = 1) -> dict[str, Any]:
    """A realistic apps/v1 Deployment with a sidecar SAIR must not touch."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": "example/post:1",
                     "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                                   "limits": {"cpu": "1", "memory": "1Gi"}},
                     "env": [{"name": "MODE", "value": "fast"}]},
                    {"name": "log-shipper", "image": "example/fluent-bit:3",
                     "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
                ]},
            },
        },
    }


def autoscaler(name: str = "imgcls", **spec_changes: Any) -> dict[str, Any]:
    """The sample PipelineAutoscaler on the simulator, with an HPA policy and 1 s rounds
    so a test sees several rounds in a few seconds."""
    pa = sample("pipelineautoscaler.yaml")
    pa["metadata"]["name"] = name
    pa["spec"]["policy"] = {"name": "hpa"}
    pa["spec"]["metrics"] = {"source": "simulator", "profile": "image_classification"}
    pa["spec"]["config"] = {"loop": {"decision_interval_s": 1, "settle_s": 0},
                            "validator": {"cooldown_up_s": 0, "cooldown_down_s": 0}}
    pa["spec"].update(spec_changes)
    return pa


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


def status(server: ApiServer, name: str = "imgcls") -> dict[str, Any]:
    try:
        return server.store.get(AUTOSCALERS, "default", name).get("status") or {}
    except ApiError:  # not created yet, or deleted
        return {}


def replicas(server: ApiServer, deployment: str) -> int:
    doc = yaml.safe_load(server.store.get(RAYSERVICES, "default", "imgcls")["spec"][
        "serveConfigV2"])
    return next(d for d in doc["applications"][0]["deployments"]
                if d["name"] == deployment)["num_replicas"]

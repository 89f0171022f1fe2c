"""cluster.yaml and the cloud variants pass Ray's own cluster-config preparation and
schema validation (what `ray up` runs before touching any machine)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.helpers import ROOT

ray_util = pytest.importorskip("ray.autoscaler._private.util")
jsonschema = pytest.importorskip("jsonschema")

CONFIGS = [ROOT / "cluster.yaml", ROOT / "deploy" / "ray-up" / "aws.yaml",
           ROOT / "deploy" / "ray-up" / "gcp.yaml"]


def check(config: dict[str, Any]) -> dict[str, Any]:
    prepared = ray_util.prepare_config(copy.deepcopy(config))
    ray_util.validate_config(prepared)
    return prepared


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_accepts_the_config(path: Path) -> None:
    prepared = check(load(path))
    head = prepared["head_node_type"]
    # The head runs the dashboard (Serve REST / external scaler) and the metrics port; the
    # dashboard (which runs submitted jobs, unauthenticated) on its loopback only.
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-port=8265" in start and "--metrics-export-port=8080" in start
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    workers = " ".join(prepared["worker_start_ray_commands"])
    assert "--metrics-export-port=8080" in workers
    # sair-ray is installed from the synced repository with its extras.
    setup = " ".join(prepared["setup_commands"])
    assert "sair-ray[" in setup and "torch==2.13.0" in setup
    assert head in prepared["available_node_types"]


def test_local_cluster_keeps_every_worker() -> None:
    prepared = check(load(ROOT / "cluster.yaml"))
    node = prepared["available_node_types"]["local.cluster.node"]
    n = len(prepared["provider"]["worker_ips"])
    assert node["min_workers"] == node["max_workers"] == n


@pytest.mark.parametrize("path", CONFIGS[1:], ids=lambda p: p.name)
def test_cloud_variants_have_gpu_workers(path: Path) -> None:
    types = check(load(path))["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["head"]["resources"] == {"CPU": 0}  # no Serve replicas on the head


def test_validation_is_real_an_unknown_key_fails() -> None:
    bad = load(ROOT / "cluster.yaml")
    bad["head_start_ray_comands"] = ["ray start --head"]  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_comands"):
        check(bad)

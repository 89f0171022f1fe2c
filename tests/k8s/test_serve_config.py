"""serveConfigV2 editing: minimal, field-preserving, and refusing what it must not touch."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from sair_ray.backends.kubernetes import (
    MIB,
    RATE_ENV,
    KubernetesBackendError,
    ServeConfigError,
    ServeTarget,
    edit_serve_config,
    parse_quantity,
    read_serve_allocation,
)
from sair_ray.types import StageAllocation
from tests.factories import pipeline
from tests.k8s.helpers import sample

APP = "image_classification"
TARGETS = {s: ServeTarget(APP, s) for s in ("preprocess", "inference", "postprocess")}


def serve_config() -> str:
    return sample("rayservice.yaml")["spec"]["serveConfigV2"]


def deployment(doc: dict[str, Any], name: str) -> dict[str, Any]:
    app = next(a for a in doc["applications"] if a["name"] == APP)
    return next(d for d in app["deployments"] if d["name"] == name)


def test_reads_the_declared_allocation() -> None:
    alloc = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    assert alloc["preprocess"] == StageAllocation(1, 1000, 1024, 1.0)
    assert alloc["inference"] == StageAllocation(1, 2000, 4096, 1.0)
    # postprocess sets only num_replicas: the rest is the stage's initial allocation.
    assert alloc["postprocess"] == pipeline().stage("postprocess").initial


def test_replica_change_touches_only_num_replicas() -> None:
    before = yaml.safe_load(serve_config())
    cur = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    target = {**cur, "preprocess": StageAllocation(3, 1000, 1024)}
    text, changes = edit_serve_config(serve_config(), pipeline(), TARGETS, target)
    after = yaml.safe_load(text)
    assert [(c.where, c.field, c.old, c.new) for c in changes] == [
        (f"serve:{APP}/preprocess", "num_replicas", 1, 3)]
    expected = copy.deepcopy(before)
    deployment(expected, "preprocess")["num_replicas"] = 3
    # Every field SAIR does not own survives: http_options, logging_config, runtime_env,
    # user_config, max_ongoing_requests, graceful_shutdown_timeout_s, the ingress...
    assert after == expected


def test_cpu_change_on_existing_actor_options_writes_only_that_field() -> None:
    cur = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    target = {**cur, "preprocess": StageAllocation(1, 1500, 1024)}
    text, changes = edit_serve_config(serve_config(), pipeline(), TARGETS, target)
    opts = deployment(yaml.safe_load(text), "preprocess")["ray_actor_options"]
    assert opts == {"num_cpus": 1.5, "memory": 1073741824}
    assert [c.field for c in changes] == ["ray_actor_options.num_cpus"]


def test_resources_without_actor_options_are_written_whole() -> None:
    # Serve replaces the code's ray_actor_options by the config's, so a partial mapping
    # would drop what the code declared: SAIR writes every resource it knows.
    cur = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    target = {**cur, "postprocess": StageAllocation(2, 1000, 1536)}
    text, changes = edit_serve_config(serve_config(), pipeline(), TARGETS, target)
    dep = deployment(yaml.safe_load(text), "postprocess")
    assert dep == {"name": "postprocess", "num_replicas": 2,
                   "ray_actor_options": {"num_cpus": 1, "memory": 1536 * MIB}}
    assert {c.field for c in changes} == {"num_replicas", "ray_actor_options.num_cpus",
                                          "ray_actor_options.memory"}


def test_gpu_rate_goes_to_the_shim_env_var_and_keeps_the_others() -> None:
    cur = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    target = {**cur, "inference": StageAllocation(1, 2000, 4096, 0.6)}
    text, changes = edit_serve_config(serve_config(), pipeline(), TARGETS, target)
    opts = deployment(yaml.safe_load(text), "inference")["ray_actor_options"]
    assert opts["runtime_env"]["env_vars"] == {
        "LD_PRELOAD": "/opt/sair/cuda_tb/libcuda_tb.so",
        "CUDA_TB_SOCKET": "/tmp/sair-gpu/cuda_tb-%p.sock", RATE_ENV: "0.6"}
    assert opts["num_gpus"] == 1 and opts["num_cpus"] == 2
    assert [(c.field, c.old, c.new) for c in changes] == [
        ("ray_actor_options.runtime_env.env_vars.CUDA_TB_RATE", "1", "0.6")]
    assert read_serve_allocation(text, pipeline(), TARGETS)["inference"].rate == 0.6


@pytest.mark.parametrize("inference", [
    {"name": "inference"},  # the code's options (and its LD_PRELOAD) are in force
    {"name": "inference", "ray_actor_options": {"num_gpus": 1}},  # the shim is not loaded
])
def test_gpu_rate_is_not_written_where_the_config_does_not_load_the_shim(
        inference: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    # Writing runtime_env here would replace the code's LD_PRELOAD and switch the shim off.
    text = yaml.safe_dump({"applications": [{"name": APP, "import_path": "x:y",
                                             "deployments": [inference]}]})
    target = {"inference": StageAllocation(2, 2000, 4096, 0.5)}
    new, changes = edit_serve_config(text, pipeline(), TARGETS, target)
    assert [c.field for c in changes] == ["num_replicas"]
    assert deployment(yaml.safe_load(new), "inference") == {**inference, "num_replicas": 2}
    assert "GPU rate 0.50 not applied" in caplog.text and "LD_PRELOAD" in caplog.text


def test_missing_deployment_entry_is_added_with_only_what_changed() -> None:
    text = yaml.safe_dump({"applications": [{"name": APP, "import_path": "x:y"}]})
    target = {"preprocess": StageAllocation(2, 1000, 1024)}
    new, _ = edit_serve_config(text, pipeline(), TARGETS, target)
    assert yaml.safe_load(new)["applications"][0]["deployments"] == [
        {"name": "preprocess", "num_replicas": 2}]


def test_no_change_returns_the_original_string() -> None:
    cur = read_serve_allocation(serve_config(), pipeline(), TARGETS)
    text = serve_config()
    new, changes = edit_serve_config(text, pipeline(), TARGETS, cur)
    assert changes == [] and new is text


def test_serve_autoscaling_is_refused_with_the_deployment_named() -> None:
    doc = yaml.safe_load(serve_config())
    deployment(doc, "preprocess")["autoscaling_config"] = {"min_replicas": 1}
    with pytest.raises(ServeConfigError, match=r"serve:image_classification/preprocess.*"
                                               r"autoscal"):
        read_serve_allocation(yaml.safe_dump(doc), pipeline(), TARGETS)


@pytest.mark.parametrize("text, match", [
    ("applications: []\n", "no application 'image_classification'"),
    ("{not yaml", "not valid YAML"),
    ("http_options: {}\n", "no 'applications' list"),
])
def test_bad_serve_config_names_the_problem(text: str, match: str) -> None:
    with pytest.raises(ServeConfigError, match=match):
        read_serve_allocation(text, pipeline(), TARGETS)


def test_serve_config_must_be_a_string() -> None:
    with pytest.raises(ServeConfigError, match="must be a YAML string"):
        read_serve_allocation({"applications": []}, pipeline(), TARGETS)


@pytest.mark.parametrize("q, value", [("500m", 0.5), ("2", 2.0), ("1.5Gi", 1.5 * 2**30),
                                      ("512Mi", 512 * MIB), ("1G", 1e9), (3, 3.0)])
def test_parse_quantity(q: str | int, value: float) -> None:
    assert parse_quantity(q, "x") == pytest.approx(value)


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(KubernetesBackendError, match="'12 cores' is not a Kubernetes quantity"):
        parse_quantity("12 cores", "stage x cpu")

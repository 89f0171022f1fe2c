"""The operator does not trust what a PipelineAutoscaler names: another namespace's
RayService, a policy URL or API-key variable, a metrics address are taken only from the
operator's allow-lists (`OperatorTrust`, `sair operator` flags); every Kubernetes call
has a request timeout; the patch history is bounded. One hostile spec per rule, parsed
and then run through the operator against the loopback apiserver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sair_ray.backends.kubernetes import (
    PATCH_HISTORY,
    FieldChange,
    InMemoryObject,
    KubeRayBackend,
    PatchRecord,
    ServeTarget,
)
from sair_ray.cli import app
from sair_ray.operator.loop import Operator
from sair_ray.operator.spec import AutoscalerSpec, AutoscalerSpecError, OperatorTrust
from sair_ray.profiles import load_profile
from tests.k8s.apiserver import ApiServer
from tests.k8s.helpers import (
    AUTOSCALERS,
    RAYSERVICES,
    autoscaler,
    sample,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

STRICT = OperatorTrust()
TRUST = OperatorTrust.from_flags(
    cross_namespaces=["shared"],
    endpoints=["llm=http://sair-policy.default.svc:8000/v1", "other=https://api.example/v1"],
    api_key_envs=["llm=SAIR_POLICY_KEY"],
    metrics_addresses=["main=ray://imgcls-head-svc.default.svc:10001"])


def parse(trust: OperatorTrust | None = TRUST, ns: str = "default",
          **changes: Any) -> AutoscalerSpec:
    pa = sample("pipelineautoscaler.yaml")
    pa["metadata"]["namespace"] = ns
    pa["spec"]["policy"] = {"name": "sair", "backend": "vllm"}
    pa["spec"]["metrics"] = {"source": "ray"}   # the RayService's own head by default
    pa["spec"].update(changes)
    return AutoscalerSpec.from_object(pa, trust)


# -- the rules, on the parsed spec ------------------------------------------------------------
def test_cross_namespace_rayservice_is_refused_unless_allowed() -> None:
    with pytest.raises(AutoscalerSpecError,
                       match=r"team-a/imgcls: spec.rayService.namespace: 'team-b' is not this "
                             r"PipelineAutoscaler's namespace \('team-a'\).*"
                             r"--allow-cross-namespace team-b"):
        parse(STRICT, ns="team-a", rayService={"name": "imgcls", "namespace": "team-b"})
    with pytest.raises(AutoscalerSpecError, match="spec.rayService.namespace: 'team-b'"):
        parse(TRUST, ns="team-a", rayService={"name": "imgcls", "namespace": "team-b"})
    s = parse(TRUST, ns="team-a", rayService={"name": "imgcls", "namespace": "shared"})
    assert s.rayservice_namespace == "shared"
    anyns = OperatorTrust.from_flags(cross_namespaces=["*"])
    assert parse(anyns, ns="a", rayService={"name": "x", "namespace": "b"}).rayservice_namespace \
        == "b"
    # its own namespace, spelled out, needs no allowance
    assert parse(STRICT, ns="team-a", rayService={"name": "x", "namespace": "team-a"})


@pytest.mark.parametrize("name", ["evil.example.com:10001/x", "Imgcls", "a" * 64, "-x"])
def test_rayservice_name_must_be_a_kubernetes_name(name: str) -> None:
    # it makes up the default metrics address ray://<name>-head-svc.<ns>.svc:10001
    with pytest.raises(AutoscalerSpecError, match=r"spec.rayService.name: .* DNS-1123"):
        parse(STRICT, rayService={"name": name})


def test_policy_url_must_be_an_allowed_endpoint() -> None:
    with pytest.raises(AutoscalerSpecError,
                       match=r"spec.policy.url: 'http://attacker.example/v1' is not a policy "
                             r"endpoint this operator allows \(allowed, by name or URL: llm, "
                             r"other"):
        parse(policy={"name": "sair", "backend": "openai", "url": "http://attacker.example/v1"})
    with pytest.raises(AutoscalerSpecError, match=r"spec.config.policy.url: .*allowed, by name "
                                                  r"or URL: none"):
        parse(STRICT, config={"policy": {"url": "http://attacker.example/v1"}})
    # by name, or by its URL however spelled
    by_name = parse(policy={"name": "sair", "backend": "vllm", "url": "llm"})
    assert by_name.config.policy.url == "http://sair-policy.default.svc:8000/v1"
    by_url = parse(policy={"name": "sair", "backend": "vllm",
                           "url": "http://sair-policy.default.svc:8000/"})
    assert by_url.config.policy.url == "http://sair-policy.default.svc:8000/v1"


def test_api_key_variable_is_the_operators_never_the_resources() -> None:
    # the endpoint's own variable, whatever the defaults say
    assert parse(policy={"name": "sair", "url": "llm"}).config.policy.api_key_env == \
        "SAIR_POLICY_KEY"
    # an endpoint without one: no key is read at all (not OPENAI_API_KEY, the default)
    assert parse(policy={"name": "sair", "url": "other"}).config.policy.api_key_env == ""
    assert parse(STRICT).config.policy.api_key_env == ""
    # a resource naming any other variable of the operator's environment is refused
    for hostile in ("AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"):
        with pytest.raises(AutoscalerSpecError,
                           match=r"spec.config.policy.api_key_env: the API key's variable "
                                 r"is the operator's to choose"):
            parse(policy={"name": "sair", "url": "llm"},
                  config={"policy": {"api_key_env": hostile}})


def test_a_model_file_on_the_operators_disk_is_not_the_resources_to_pick() -> None:
    with pytest.raises(AutoscalerSpecError,
                       match=r"spec.policy.model: '/var/run/secrets/kubernetes.io/"
                             r"serviceaccount/token' would be a model file on the operator's"):
        parse(policy={"name": "sair", "backend": "llamacpp",
                      "model": "/var/run/secrets/kubernetes.io/serviceaccount/token"})
    with pytest.raises(AutoscalerSpecError, match=r"spec.config.policy.model: '/tmp/x.gguf'"):
        parse(STRICT, config={"policy": {"model": "/tmp/x.gguf"}})
    # a model served by an allowed endpoint is fine
    assert parse(policy={"name": "sair", "url": "llm", "model": "Qwen/Qwen2.5-7B-Instruct"}
                 ).config.policy.model == "Qwen/Qwen2.5-7B-Instruct"


def test_metrics_address_must_be_allowed() -> None:
    with pytest.raises(AutoscalerSpecError,
                       match=r"spec.metrics.address: 'ray://attacker.example:10001' is not a "
                             r"metrics address this operator allows \(allowed, by name or "
                             r"address: main"):
        parse(metrics={"source": "ray", "address": "ray://attacker.example:10001"})
    with pytest.raises(AutoscalerSpecError, match="allowed, by name or address: none"):
        parse(STRICT, metrics={"source": "ray", "address": "ray://imgcls-head-svc:10001"})
    assert parse(metrics={"source": "ray", "address": "main"}).metrics.address == \
        "ray://imgcls-head-svc.default.svc:10001"
    assert parse(STRICT, metrics={"source": "ray"}).metrics.address is None


def test_without_a_trust_nothing_is_checked_for_dry_runs() -> None:
    s = parse(None, ns="a", rayService={"name": "x", "namespace": "b"},
              policy={"name": "sair", "url": "http://anything/v1"})
    assert s.rayservice_namespace == "b" and s.config.policy.url == "http://anything/v1"


@pytest.mark.parametrize("flags, match", [
    ({"endpoints": ["llm"]}, r"--policy-endpoint 'llm': expected NAME=URL"),
    ({"endpoints": ["llm=ftp://x"]}, r"not an http\(s\) URL"),
    ({"endpoints": ["a=http://x", "a=http://y"]}, r"'a' given twice"),
    ({"api_key_envs": ["llm=KEY"]}, r"no --policy-endpoint named 'llm'"),
    ({"endpoints": ["llm=http://x"], "api_key_envs": ["llm=$(id)"]}, "not a variable name"),
    ({"cross_namespaces": ["Team A"]}, "not a namespace name"),
    ({"metrics_addresses": ["=ray://x"]}, "expected NAME=ADDRESS"),
])
def test_bad_operator_flags_are_named(flags: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OperatorTrust.from_flags(**flags)


def test_cli_refuses_a_malformed_allow_list() -> None:
    res = CliRunner().invoke(app, ["operator", "--policy-endpoint", "nourl"])
    assert res.exit_code == 2 and "expected NAME=URL" in res.output


# -- the rules, through the operator and the API ----------------------------------------------
def _operator(api_client: Any, tmp_path: Path, **kw: Any) -> Operator:
    return Operator(api_client, namespace=None, data_dir=tmp_path, watch_timeout_s=1, **kw)


def _hostile(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    pa = autoscaler(name, **spec)
    pa["metadata"]["namespace"] = ns
    return pa


def test_hostile_resources_are_refused_with_the_reason_in_their_status(
        apiserver: ApiServer, api_client: Any, tmp_path: Path) -> None:
    for ns in ("team-a", "team-b"):
        rs = sample("rayservice.yaml")
        rs["metadata"]["namespace"] = ns
        apiserver.store.create(RAYSERVICES, ns, rs)
    victim = apiserver.store.get(RAYSERVICES, "team-b", "imgcls")["metadata"]["resourceVersion"]
    apiserver.store.create(AUTOSCALERS, "team-a", _hostile(
        "team-a", "cross", rayService={"name": "imgcls", "namespace": "team-b"}))
    apiserver.store.create(AUTOSCALERS, "team-a", _hostile(
        "team-a", "llm", policy={"name": "sair", "backend": "openai",
                                 "url": "http://attacker.example/v1"}))
    apiserver.store.create(AUTOSCALERS, "team-a", _hostile(
        "team-a", "key", config={"policy": {"api_key_env": "AWS_SECRET_ACCESS_KEY"}}))
    apiserver.store.create(AUTOSCALERS, "team-a", _hostile(
        "team-a", "metrics", metrics={"source": "ray", "address": "ray://attacker:10001"}))
    op = _operator(api_client, tmp_path)
    op.run_once()
    assert op.runners == {}
    errors = {n: apiserver.store.get(AUTOSCALERS, "team-a", n)["status"]["error"]
              for n in ("cross", "llm", "key", "metrics")}
    assert "spec.rayService.namespace: 'team-b'" in errors["cross"]
    assert "spec.policy.url: 'http://attacker.example/v1'" in errors["llm"]
    assert "spec.config.policy.api_key_env" in errors["key"]
    assert "spec.metrics.address: 'ray://attacker:10001'" in errors["metrics"]
    # nothing was read from or written to team-b
    assert not [r for r in apiserver.store.requests if "/namespaces/team-b/" in r.path]
    assert apiserver.store.get(RAYSERVICES, "team-b", "imgcls")["metadata"][
        "resourceVersion"] == victim
    op.close()


def test_an_allowed_cross_namespace_rayservice_is_scaled(apiserver: ApiServer,
                                                         api_client: Any,
                                                         tmp_path: Path) -> None:
    rs = sample("rayservice.yaml")
    rs["metadata"]["namespace"] = "shared"
    apiserver.store.create(RAYSERVICES, "shared", rs)
    apiserver.store.create(AUTOSCALERS, "team-a", _hostile(
        "team-a", "imgcls", rayService={"name": "imgcls", "namespace": "shared"}))
    op = _operator(api_client, tmp_path,
                   trust=OperatorTrust.from_flags(cross_namespaces=["shared"]))
    op.run_once()
    assert op.runners[("team-a", "imgcls")].backend.rayservice.ref == \
        "rayservices.ray.io/shared/imgcls"
    op.close()


@pytest.fixture
def running(apiserver: ApiServer, api_client: Any, tmp_path: Path) -> Iterator[Operator]:
    apiserver.store.create(RAYSERVICES, "default", sample("rayservice.yaml"))
    op = Operator(api_client, namespace="default", data_dir=tmp_path, watch_timeout_s=1,
                  request_timeout_s=0.3)
    stop = threading.Event()
    t = threading.Thread(target=op.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield op
    finally:
        apiserver.store.stall = None
        stop.set()
        t.join(timeout=15)
        assert not t.is_alive(), "operator did not stop"


def test_a_hanging_apiserver_fails_rounds_with_a_readable_error_then_recovers(
        apiserver: ApiServer, running: Operator) -> None:
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    wait_for(lambda: status(apiserver).get("rounds", 0) >= 1, what="a first round")
    # the RayService stops answering (GETs hang for 2 s, the limit is 0.3 s)
    apiserver.store.stall = lambda method, path: (
        2.0 if method == "GET" and path.endswith("/rayservices/imgcls") else 0.0)
    st = wait_for(lambda: status(apiserver).get("roundsFailed", 0) >= 2 and status(apiserver),
                  what="failed rounds in status")
    assert st["error"] == ("KubernetesTimeout: rayservices.ray.io/default/imgcls: get timed "
                           "out: the Kubernetes API did not answer within 0.3 s")
    runner = running.runners[("default", "imgcls")]
    assert runner.rounds_failed >= 2
    apiserver.store.stall = None
    st = wait_for(lambda: status(apiserver).get("error") == "" and status(apiserver),
                  what="a round that succeeds again")
    assert running.runners[("default", "imgcls")] is runner   # not restarted, just went on


def test_every_kubernetes_call_has_a_request_timeout(apiserver: ApiServer,
                                                     tmp_path: Path) -> None:
    """The list, the status write, and the RayService's GET and PATCH each give up at the
    limit (on a client without transport retries, as `sair operator` builds it)."""
    from kubernetes import client

    apiserver.store.create(RAYSERVICES, "default", sample("rayservice.yaml"))
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    cfg = client.Configuration(host=apiserver.url)
    cfg.retries = False
    with client.ApiClient(cfg) as api_client:
        op = Operator(api_client, namespace="default", data_dir=tmp_path, watch_timeout_s=1,
                      request_timeout_s=0.3)
        op.sync()
        runner = op.runners[("default", "imgcls")]
        apiserver.store.stall = lambda method, path: 3.0
        try:
            t0 = time.monotonic()
            with pytest.raises(Exception, match="timed out"):
                op.sync()                                       # list
            t1 = time.monotonic()
            op._write_status(("default", "imgcls"), {"rounds": 1})   # logged, not raised
            t2 = time.monotonic()
            assert runner.tick(time.time() + 60) is None       # GET: a failed round
            t3 = time.monotonic()
            with pytest.raises(Exception, match="patch timed out"):
                runner.backend.rayservice.patch({"metadata": {}})
            t4 = time.monotonic()
        finally:
            apiserver.store.stall = None
        assert runner.rounds_failed == 1 and "get timed out" in runner.last_error
        for took in (t1 - t0, t2 - t1, t3 - t2, t4 - t3):
            assert 0.25 < took < 1.5
        op.close()


def test_patch_history_is_bounded_and_counted() -> None:
    pipeline = load_profile("image_classification").pipeline
    rs = InMemoryObject(sample("rayservice.yaml"))
    b = KubeRayBackend(pipeline, rs, None,
                       serve={s: ServeTarget("image_classification", s)
                              for s in pipeline.stage_names})
    change = FieldChange("serve:a/b", "num_replicas", 1, 2)
    for i in range(PATCH_HISTORY + 50):
        b._record(PatchRecord("obj", {"i": i}, (change,), 1))
    assert len(b.patches) == PATCH_HISTORY and b.patch_count == PATCH_HISTORY + 50
    assert b.patches[0].body == {"i": 50} and b.patches[-1].body == {"i": PATCH_HISTORY + 49}

"""deploy/rbac.yaml is exactly what the operator needs: every request it makes is allowed,
and every permission granted is used."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from sair_ray.operator.loop import Operator
from tests.k8s.apiserver import ApiServer, Request
from tests.k8s.helpers import (
    AUTOSCALERS,
    DEPLOYMENTS,
    RAYSERVICES,
    ROOT,
    autoscaler,
    plain_deployment,
    replicas,
    sample,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


def rbac_triple(r: Request) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of a request, as the authorizer sees it."""
    parts = [p for p in r.path.split("/") if p]
    group = parts[1] if parts[0] == "apis" else ""
    rest = parts[3:]
    if rest[0] == "namespaces":
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"GET": "get" if named else ("watch" if r.query.get("watch") in ("true", "1")
                                        else "list"),
            "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}[r.method]
    return group, resource, verb


def granted(path: Path, kind: str) -> set[tuple[str, str, str]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    role = next(d for d in docs if d["kind"] == kind)
    return {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"]
            for res in rule["resources"] for v in rule["verbs"]}


@pytest.fixture
def used(apiserver: ApiServer, api_client: Any, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Run the operator on an autoscaler with a Serve stage and a plain-Deployment stage
    until it has patched both, and collect what it asked the API for."""
    rs = sample("rayservice.yaml")
    doc = yaml.safe_load(rs["spec"]["serveConfigV2"])
    doc["applications"][0]["deployments"][1]["num_replicas"] = 3  # preprocess
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(doc, sort_keys=False)
    apiserver.store.create(RAYSERVICES, "default", rs)
    apiserver.store.create(DEPLOYMENTS, "default", plain_deployment("post", replicas=3))
    pa = autoscaler(policy={"name": "static"})  # one replica per stage: scales both down
    pa["spec"]["stages"][2]["kubernetesDeployment"] = {"name": "post", "container": "app"}
    apiserver.store.create(AUTOSCALERS, "default", pa)

    op = Operator(api_client, namespace="default", data_dir=tmp_path, watch_timeout_s=1)
    stop = threading.Event()
    t = threading.Thread(target=op.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: replicas(apiserver, "preprocess") < 3, what="RayService patched")
        wait_for(lambda: apiserver.store.get(DEPLOYMENTS, "default", "post")["spec"][
            "replicas"] < 3, what="Deployment patched")
        wait_for(lambda: status(apiserver).get("rounds", 0) >= 1, what="status written")
    finally:
        stop.set()
        t.join(timeout=10)
    return {rbac_triple(r) for r in apiserver.store.requests}


def test_every_request_is_allowed_and_every_grant_is_used(
        used: set[tuple[str, str, str]]) -> None:
    role = granted(ROOT / "deploy" / "rbac.yaml", "Role")
    assert used - role == set(), "the operator needs permissions deploy/rbac.yaml lacks"
    assert role - used == set(), "deploy/rbac.yaml grants permissions the operator never uses"


def test_cluster_variant_grants_the_same() -> None:
    assert granted(ROOT / "deploy" / "rbac-cluster.yaml", "ClusterRole") == \
        granted(ROOT / "deploy" / "rbac.yaml", "Role")


def test_binding_names_the_service_account_the_operator_runs_as() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    deploy = [d for d in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text())
              if d and d["kind"] == "Deployment"][0]
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa,
                                    "namespace": deploy["metadata"]["namespace"]}]
    assert binding["roleRef"]["name"] == "sair-operator"

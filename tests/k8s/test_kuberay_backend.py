"""KubeRayBackend through the real `kubernetes` client against the loopback apiserver:
serialisation, merge-patch content type, resourceVersion, 409 retries, field preservation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sair_ray.backends.kubernetes import (
    RAYSERVICE,
    ConflictError,
    DeploymentTarget,
    KubeCustomObject,
    KubeDeployment,
    KubeRayBackend,
    KubernetesBackendError,
    ServeTarget,
)
from sair_ray.operator.metrics import SimulatedMetrics
from sair_ray.profiles import load_profile
from sair_ray.types import StageAllocation
from tests.k8s.apiserver import ApiServer, Kind, Store
from tests.k8s.helpers import DEPLOYMENTS, RAYSERVICES, plain_deployment, sample

pytestmark = pytest.mark.timeout(60)
APP = "image_classification"
STAGES = ("preprocess", "inference", "postprocess")


def backend(api_client: Any, *, serve: tuple[str, ...] = STAGES,
            plain: dict[str, str] | None = None, max_attempts: int = 5) -> KubeRayBackend:
    from kubernetes import client

    custom, apps = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client)
    pipe = load_profile("image_classification").pipeline
    return KubeRayBackend(
        pipe, KubeCustomObject(custom, *RAYSERVICE, "default", "imgcls"),
        SimulatedMetrics("image_classification", pipe.stage_names, start=0.0),
        serve={s: ServeTarget(APP, s) for s in serve},
        deployments={s: DeploymentTarget(KubeDeployment(apps, "default", name), "app")
                     for s, name in (plain or {}).items()},
        max_attempts=max_attempts)


def serve_doc(store: Store) -> dict[str, Any]:
    return yaml.safe_load(store.get(RAYSERVICES, "default", "imgcls")["spec"]["serveConfigV2"])


def dep(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in doc["applications"][0]["deployments"] if d["name"] == name)


@pytest.fixture
def seeded(apiserver: ApiServer) -> ApiServer:
    rs = sample("rayservice.yaml")
    rs["status"] = {"serviceStatus": "Running"}
    apiserver.store.create(RAYSERVICES, "default", rs)
    return apiserver


def test_apply_sends_one_minimal_conditional_merge_patch(seeded: ApiServer,
                                                         api_client: Any) -> None:
    b = backend(api_client)
    before = seeded.store.get(RAYSERVICES, "default", "imgcls")
    alloc = b.allocation()
    b.apply({**alloc, "preprocess": StageAllocation(3, 1000, 1024)}, now=1.0)

    writes = seeded.store.writes()
    assert len(writes) == 1
    w = writes[0]
    assert (w.method, w.content_type) == ("PATCH", "application/merge-patch+json")
    assert w.path == "/apis/ray.io/v1/namespaces/default/rayservices/imgcls"
    # Only the serve config and the version it was computed from.
    assert set(w.body) == {"metadata", "spec"}
    assert w.body["metadata"] == {"resourceVersion": before["metadata"]["resourceVersion"]}
    assert set(w.body["spec"]) == {"serveConfigV2"}

    after = seeded.store.get(RAYSERVICES, "default", "imgcls")
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert after["status"] == {"serviceStatus": "Running"}
    doc = serve_doc(seeded.store)
    assert dep(doc, "preprocess")["num_replicas"] == 3
    assert dep(doc, "preprocess")["graceful_shutdown_timeout_s"] == 20
    assert dep(doc, "inference")["user_config"] == {"batch_size": 1, "warmup": True}
    assert b.allocation()["preprocess"] == StageAllocation(3, 1000, 1024)
    assert len(b.patches) == 1 and b.patches[0].attempts == 1


def test_unchanged_allocation_writes_nothing(seeded: ApiServer, api_client: Any) -> None:
    b = backend(api_client)
    b.apply(b.allocation(), now=1.0)
    assert seeded.store.writes() == [] and list(b.patches) == [] and b.patch_count == 0


def test_conflict_rereads_and_keeps_the_other_writers_change(seeded: ApiServer,
                                                             api_client: Any) -> None:
    """Someone edits the RayService between SAIR's read and its write: the apiserver says
    409, SAIR re-reads, recomputes its edit on top of theirs, and both changes survive."""
    def user_edit(store: Store, kind: Kind, ns: str, name: str) -> None:
        obj = store.get(kind, ns, name)
        doc = yaml.safe_load(obj["spec"]["serveConfigV2"])
        dep(doc, "ingress")["max_ongoing_requests"] = 128
        doc["applications"][0]["deployments"].append({"name": "audit", "num_replicas": 1})
        obj["spec"]["serveConfigV2"] = yaml.safe_dump(doc, sort_keys=False)
        store.write(kind, ns, name, obj)

    b = backend(api_client)
    alloc = b.allocation()
    seeded.store.before_next_write(user_edit)
    b.apply({**alloc, "postprocess": StageAllocation(2, 1000, 1024)}, now=1.0)

    patches = [r for r in seeded.store.requests if r.method == "PATCH"]
    assert [p.status for p in patches] == [409, 200]
    assert patches[0].body["metadata"]["resourceVersion"] != \
        patches[1].body["metadata"]["resourceVersion"]
    doc = serve_doc(seeded.store)
    assert dep(doc, "ingress")["max_ongoing_requests"] == 128
    assert dep(doc, "audit") == {"name": "audit", "num_replicas": 1}
    assert dep(doc, "postprocess")["num_replicas"] == 2
    assert b.patches[-1].attempts == 2


def test_endless_conflicts_give_up_with_a_clear_error(seeded: ApiServer,
                                                      api_client: Any) -> None:
    def bump(store: Store, kind: Kind, ns: str, name: str) -> None:
        obj = store.get(kind, ns, name)
        obj["metadata"].setdefault("annotations", {})["touched"] = \
            obj["metadata"]["resourceVersion"]
        store.write(kind, ns, name, obj)
        store.hooks.append(bump)  # and again before the next write

    b = backend(api_client, max_attempts=3)
    alloc = b.allocation()
    seeded.store.before_next_write(bump)
    with pytest.raises(ConflictError, match=r"rayservices.ray.io/default/imgcls: still "
                                            r"conflicting after 3 attempts"):
        b.apply({**alloc, "preprocess": StageAllocation(2, 1000, 1024)}, now=1.0)
    seeded.store.hooks.clear()
    assert [r.status for r in seeded.store.requests if r.method == "PATCH"] == [409] * 3


def test_missing_rayservice_is_named(apiserver: ApiServer, api_client: Any) -> None:
    with pytest.raises(KubernetesBackendError,
                       match=r"rayservices.ray.io/default/imgcls: get failed with HTTP 404"):
        backend(api_client).allocation()


def test_plain_deployment_stage_scales_replicas_and_requests(seeded: ApiServer,
                                                             api_client: Any) -> None:
    seeded.store.create(DEPLOYMENTS, "default", plain_deployment("post"))
    b = backend(api_client, serve=("preprocess", "inference"), plain={"postprocess": "post"})
    alloc = b.allocation()
    assert alloc["postprocess"] == StageAllocation(1, 500, 512)
    b.apply({**alloc, "postprocess": StageAllocation(3, 1500, 512)}, now=1.0)

    w = seeded.store.writes()[-1]
    assert w.content_type == "application/strategic-merge-patch+json"
    assert w.path == "/apis/apps/v1/namespaces/default/deployments/post"
    obj = seeded.store.get(DEPLOYMENTS, "default", "post")
    assert obj["spec"]["replicas"] == 3
    app, sidecar = obj["spec"]["template"]["spec"]["containers"]
    # The request rose above the old 1-core limit, so the limit follows; memory is unchanged.
    assert app["resources"] == {"requests": {"cpu": "1500m", "memory": "512Mi"},
                                "limits": {"cpu": "1500m", "memory": "1Gi"}}
    assert app["env"] == [{"name": "MODE", "value": "fast"}]
    assert sidecar == plain_deployment()["spec"]["template"]["spec"]["containers"][1]
    assert b.allocation()["postprocess"] == StageAllocation(3, 1500, 512)
    # The RayService was not written: no Serve stage changed.
    assert all("rayservices" not in r.path for r in seeded.store.writes())


def test_observe_overlays_the_declared_allocation(seeded: ApiServer, api_client: Any) -> None:
    b = backend(api_client)
    b.apply({**b.allocation(), "preprocess": StageAllocation(4, 1000, 1024)}, now=0.0)
    ctx = b.observe(0.0, 30.0)
    assert ctx.stage("preprocess").replicas == 4
    assert ctx.arrival_rate > 0  # the simulator served load in the window
    free = b.free_resources()
    # 4 x 1 core + 2 cores + 1 core of 64; one GPU of 2.
    assert free.cpus == pytest.approx(64 - 7) and free.gpus == pytest.approx(1)


def test_stage_mapping_must_cover_the_pipeline(api_client: Any) -> None:
    with pytest.raises(KubernetesBackendError, match=r"\['postprocess'\].*no Serve deployment"):
        backend(api_client, serve=("preprocess", "inference"))

"""`sair operator` against the loopback apiserver: watch, one controller per resource,
status, rebuild on spec change, stop on delete, relist on 410."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sair_ray.operator.loop import Operator
from tests.k8s.apiserver import ApiServer
from tests.k8s.helpers import (
    AUTOSCALERS,
    RAYSERVICES,
    autoscaler,
    replicas,
    sample,
    status,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def running(apiserver: ApiServer, api_client: Any, tmp_path: Path) -> Iterator[Operator]:
    apiserver.store.create(RAYSERVICES, "default", sample("rayservice.yaml"))
    op = Operator(api_client, namespace="default", data_dir=tmp_path, watch_timeout_s=1)
    stop = threading.Event()
    t = threading.Thread(target=op.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield op
    finally:
        stop.set()
        t.join(timeout=10)
        assert not t.is_alive(), "operator did not stop"


def test_operator_scales_the_rayservice_and_reports_status(apiserver: ApiServer,
                                                           running: Operator,
                                                           tmp_path: Path) -> None:
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    # 50 req/s against one 1-core preprocess replica: HPA scales it up through the
    # RayService within a few 1 s rounds.
    wait_for(lambda: replicas(apiserver, "preprocess") > 1, what="a scale-up patch")
    runner = running.runners[("default", "imgcls")]
    st = wait_for(lambda: status(apiserver).get("rounds", 0) >= 2 and status(apiserver),
                  what="two rounds in status")
    # Our own status writes come back as MODIFIED events; they must not restart anything.
    assert running.runners[("default", "imgcls")] is runner
    assert st["observedGeneration"] == 1 and st["error"] == ""
    assert st["lastSource"] == "policy:hpa"
    # The patches went through the API as conditional merge patches.
    patches = [r for r in apiserver.store.requests
               if r.method == "PATCH" and r.path.endswith("/rayservices/imgcls")]
    assert patches and all(r.content_type == "application/merge-patch+json"
                           and r.body["metadata"]["resourceVersion"] for r in patches)
    # Status goes to the status subresource, and the decision log to the data dir.
    assert any(r.path.endswith("/pipelineautoscalers/imgcls/status")
               for r in apiserver.store.requests if r.method == "PATCH")
    home = tmp_path / "k8s" / "default" / "imgcls"
    assert (home / "decisions.jsonl").stat().st_size > 0
    assert json.loads((home / "state.json").read_text())["controller"]["round"] >= 1


def test_spec_change_rebuilds_and_delete_stops(apiserver: ApiServer,
                                               running: Operator) -> None:
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    wait_for(lambda: ("default", "imgcls") in running.runners, what="runner started")
    first = running.runners[("default", "imgcls")]

    pa = apiserver.store.get(AUTOSCALERS, "default", "imgcls")
    pa["spec"]["suspend"] = True
    apiserver.store.write(AUTOSCALERS, "default", "imgcls", pa)
    wait_for(lambda: status(apiserver).get("observedGeneration") == 2, what="generation 2")
    second = running.runners[("default", "imgcls")]
    assert second is not first and second.spec.suspend

    apiserver.store.delete(AUTOSCALERS, "default", "imgcls")
    wait_for(lambda: ("default", "imgcls") not in running.runners, what="runner stopped")


def test_invalid_autoscaler_reports_the_field(apiserver: ApiServer, running: Operator) -> None:
    bad = autoscaler("bad")
    bad["spec"]["stages"][0]["replicas"] = {"min": 5, "max": 2}
    apiserver.store.create(AUTOSCALERS, "default", bad)
    st = wait_for(lambda: status(apiserver, "bad").get("error"), what="error status")
    assert "spec.stages[0]" in st and "replicas_min (5) > replicas_max (2)" in st
    assert ("default", "bad") not in running.runners


def test_missing_rayservice_is_reported(apiserver: ApiServer, running: Operator) -> None:
    pa = autoscaler("orphan")
    pa["spec"]["rayService"] = {"name": "nope"}
    apiserver.store.create(AUTOSCALERS, "default", pa)
    st = wait_for(lambda: status(apiserver, "orphan").get("error"), what="error status")
    assert "rayservices.ray.io/default/nope: get failed with HTTP 404" in st


def test_expired_watch_relists(apiserver: ApiServer, api_client: Any, tmp_path: Path) -> None:
    """A watch from a resourceVersion older than the server's history gets 410 Gone; the
    operator relists and carries on from the new list's version."""
    apiserver.store.create(RAYSERVICES, "default", sample("rayservice.yaml"))
    for i in range(1100):  # push the first events out of the server's history
        apiserver.store.create(RAYSERVICES, "default",
                               {"metadata": {"name": f"filler-{i}"}, "spec": {}})
    op = Operator(api_client, namespace="default", data_dir=tmp_path, watch_timeout_s=1)
    op.resource_version = "1"
    op.run_once()
    assert op.resource_version is None  # 410 seen: relist next time
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    op.run_once()
    assert ("default", "imgcls") in op.runners
    assert int(op.resource_version) > 1100  # continued from the relist, not from "1"
    lists = [r for r in apiserver.store.requests if r.method == "GET"
             and r.path.endswith("/pipelineautoscalers") and "watch" not in r.query]
    assert len(lists) == 1
    op.close()


def test_learning_policy_keeps_a_memory_and_survives_a_rebuild(apiserver: ApiServer,
                                                               running: Operator,
                                                               tmp_path: Path) -> None:
    """SAIR's policies learn into <data dir>/k8s/<ns>/<name>/memory; a spec change rebuilds
    the controller on the same memory (so the old one must have let go of it) and resumes
    its saved state."""
    apiserver.store.create(AUTOSCALERS, "default", autoscaler(policy={"name": "sair-retrieval"}))
    wait_for(lambda: status(apiserver).get("rounds", 0) >= 2, what="two rounds")
    assert (tmp_path / "k8s" / "default" / "imgcls" / "memory" / "LOCK").exists()
    pa = apiserver.store.get(AUTOSCALERS, "default", "imgcls")
    pa["spec"]["slaMs"] = 800
    apiserver.store.write(AUTOSCALERS, "default", "imgcls", pa)
    st = wait_for(lambda: status(apiserver).get("observedGeneration") == 2
                  and status(apiserver).get("rounds", 0) >= 1 and status(apiserver),
                  what="rounds after the rebuild")
    assert st["error"] == ""
    assert running.runners[("default", "imgcls")].spec.pipeline.sla_ms == 800
    # The first round after the rebuild continues the count (state.json), not from 1.
    assert st["rounds"] >= 3


def test_all_namespaces_runs_one_controller_per_resource(apiserver: ApiServer,
                                                         api_client: Any,
                                                         tmp_path: Path) -> None:
    for ns in ("team-a", "team-b"):
        rs = sample("rayservice.yaml")
        rs["metadata"]["namespace"] = ns
        apiserver.store.create(RAYSERVICES, ns, rs)
        pa = autoscaler()
        pa["metadata"]["namespace"] = ns
        apiserver.store.create(AUTOSCALERS, ns, pa)
    op = Operator(api_client, namespace=None, data_dir=tmp_path, watch_timeout_s=1)
    op.run_once()
    assert set(op.runners) == {("team-a", "imgcls"), ("team-b", "imgcls")}
    assert op.runners[("team-b", "imgcls")].backend.rayservice.ref == \
        "rayservices.ray.io/team-b/imgcls"
    assert any(r.path == "/apis/sair-ray.io/v1alpha1/pipelineautoscalers"
               for r in apiserver.store.requests)
    op.close()


def test_the_operator_keeps_time_on_a_steady_clock(running: Operator) -> None:
    """Round times and cooldowns come from a SteadyClock (an NTP step moves neither)."""
    from sair_ray.session import SteadyClock

    assert isinstance(running.clock, SteadyClock)

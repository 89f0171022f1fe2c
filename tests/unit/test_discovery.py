"""Pipeline discovery from Serve's application details (sair_ray/discovery.py). The details
are the shape Ray 2.60's REST API returns (`GET /api/serve/applications/`), trimmed."""

from __future__ import annotations

import pytest

from sair_ray.discovery import (
    DiscoveryError,
    discover_pipeline,
    ingress_of,
    parse_stage_list,
    stage_order,
)
from sair_ray.types import ClusterResources, StageKind

CLUSTER = ClusterResources(cpus=8, memory_mb=16384, gpus=1)


def dep(name, *, cpus=0.1, gpus=0.0, memory=None, replicas=1, auto=None):
    opts = {"num_cpus": cpus}
    if gpus:
        opts["num_gpus"] = gpus
    if memory:
        opts["memory"] = memory
    cfg = {"name": name, "num_replicas": replicas, "ray_actor_options": opts}
    if auto:
        cfg["autoscaling_config"] = auto
    return {"name": name, "deployment_config": cfg, "target_num_replicas": replicas,
            "replicas": []}


def app(deps, edges, ingress="Ingress"):
    nodes = {d["name"]: {"name": d["name"], "app_name": "myapp", "is_ingress":
                         d["name"] == ingress,
                         "outbound_deployments": [{"name": c, "app_name": "myapp"}
                                                  for c in edges.get(d["name"], [])]}
             for d in deps}
    return {"name": "myapp", "deployments": {d["name"]: d for d in deps},
            "deployment_topology": {"app_name": "myapp", "nodes": nodes,
                                    "ingress_deployment": ingress}}


THREE = app([dep("postprocess"), dep("Ingress"), dep("infer", gpus=1, memory=2 * 1024**3),
             dep("preprocess", cpus=2, replicas=3)],
            {"Ingress": ["preprocess", "infer", "postprocess"]})


def test_order_follows_the_deployment_graph_from_the_ingress():
    assert ingress_of(THREE) == "Ingress"
    # Serve keeps a deployment's callees as a set: siblings come by name
    assert stage_order(THREE) == ["Ingress", "infer", "postprocess", "preprocess"]
    chain = app([dep("c"), dep("b"), dep("Ingress")], {"Ingress": ["b"], "b": ["c"]})
    assert stage_order(chain) == ["Ingress", "b", "c"]


def test_deployments_the_graph_does_not_reach_come_last_and_without_a_graph_by_name():
    partial = app([dep("Ingress"), dep("z"), dep("a")], {"Ingress": ["z"]})
    assert stage_order(partial) == ["Ingress", "z", "a"]
    bare = {"name": "myapp", "deployments": {"b": dep("b"), "a": dep("a")}}
    assert ingress_of(bare) is None
    assert stage_order(bare) == ["a", "b"]


def test_a_given_order_wins_and_unknown_names_are_refused():
    assert stage_order(THREE, ["infer", "Ingress"]) == ["infer", "Ingress"]
    with pytest.raises(DiscoveryError, match="nope.*its deployments are"):
        stage_order(THREE, ["nope"])
    assert parse_stage_list(" a, b,,c ") == ["a", "b", "c"]


def test_stages_read_from_the_deployments():
    p = discover_pipeline(THREE, app="myapp", sla_ms=500, cluster=CLUSTER)
    assert p.name == "myapp" and p.sla_ms == 500 and p.cluster == CLUSTER
    infer, pre = p.stage("infer"), p.stage("preprocess")
    assert infer.kind is StageKind.GPU and infer.gpus_per_replica == 1.0
    assert infer.initial.mem_mb == 2048
    assert pre.kind is StageKind.CPU and pre.initial.replicas == 3 and pre.initial.cpu_m == 2000
    # a 0.1-CPU deployment is inside its range (the defaults widened to include it)
    ing = p.stage("Ingress")
    assert ing.cpu_m_min <= ing.initial.cpu_m == 100 <= ing.cpu_m_max
    assert ing.replicas_min is None and ing.replicas_max is None


def test_autoscaling_bounds_become_the_replica_range():
    a = app([dep("Ingress", auto={"min_replicas": 2, "max_replicas": 6})], {})
    s = discover_pipeline(a, app="myapp", sla_ms=100, cluster=CLUSTER).stage("Ingress")
    assert (s.replicas_min, s.replicas_max) == (2, 6)


def test_without_an_sla_the_error_says_where_to_give_it():
    with pytest.raises(DiscoveryError, match="--sla-ms.*pipeline.sla_ms.*policy_kwargs"):
        discover_pipeline(THREE, app="myapp", sla_ms=0, cluster=CLUSTER)

"""Pipeline discovery: a live Serve app's `PipelineSpec` read from Serve itself, so an app
with no profile can be attached (`sair attach myapp --sla-ms 500`, docs/own-app.md).

- **stages** are the app's deployments;
- **order**: the one the user gave (`pipeline.stages`), else Serve's deployment graph
  (`deployment_topology` in the Serve REST API's application details, Ray >= 2.5x):
  the ingress first, then the deployments it calls, breadth first; Serve records whom a
  deployment calls as a set, not in call order, so the callees of one deployment come by
  name (give `pipeline.stages` for the call order); deployments the graph does not reach
  come last, by name;
- **kind**: a stage is GPU when its replicas reserve GPUs (`ray_actor_options.num_gpus`);
- **allocation** in force: target replicas, `num_cpus`, `memory` (the backend reads these
  every round);
- **ranges**: replicas within the deployment's `autoscaling_config` bounds when it has them
  (Serve-native mode), else the validator's global range; CPU and memory from the
  `StageSpec` defaults widened to include what the deployment has now;
- **SLA** from the config (required: Serve does not know it); **cluster** from Ray.

Pure functions of the Serve details, so they are unit-tested without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sair_ray.types import (
    ClusterResources,
    PipelineSpec,
    SpecError,
    StageAllocation,
    StageKind,
    StageSpec,
)

MB = 1024 * 1024
DEFAULT_MEM_MB = 1024   # a deployment that reserves no memory: SAIR's nominal size for it


class DiscoveryError(ValueError):
    """The app's pipeline cannot be read from Serve; the message says what to set."""


def ingress_of(app_details: Mapping[str, Any]) -> str | None:
    """The app's ingress deployment, from Serve's deployment graph (None if not exposed)."""
    topo = app_details.get("deployment_topology") or {}
    if topo.get("ingress_deployment"):
        return str(topo["ingress_deployment"])
    for name, node in (topo.get("nodes") or {}).items():
        if node.get("is_ingress"):
            return str(name)
    return None


def stage_order(app_details: Mapping[str, Any], given: Sequence[str] = ()) -> list[str]:
    """Deployment names in pipeline order (see the module docstring)."""
    deployments = list(app_details.get("deployments") or {})
    if given:
        unknown = [s for s in given if s not in deployments]
        if unknown:
            raise DiscoveryError(
                f"pipeline.stages names {', '.join(unknown)}, which the app does not have; "
                f"its deployments are {', '.join(sorted(deployments)) or 'none'}")
        return list(given)
    topo = app_details.get("deployment_topology") or {}
    nodes = topo.get("nodes") or {}
    app = app_details.get("name")
    order: list[str] = []
    ingress = ingress_of(app_details)
    frontier: list[str] = [ingress] if ingress is not None and ingress in deployments else []
    while frontier:
        name = frontier.pop(0)
        if name in order:
            continue
        order.append(name)
        callees = sorted(str(out.get("name"))
                         for out in (nodes.get(name) or {}).get("outbound_deployments") or []
                         if out.get("app_name", app) == app)
        frontier += [c for c in callees if c in deployments and c not in order]
    return order + sorted(d for d in deployments if d not in order)


def stage_from_deployment(d: Mapping[str, Any]) -> StageSpec:
    """One deployment (its REST API details) as a stage."""
    cfg = d.get("deployment_config") or {}
    opts = cfg.get("ray_actor_options") or {}
    gpus = float(opts.get("num_gpus") or 0.0)
    cpu_m = max(1, round(float(opts.get("num_cpus", 1.0)) * 1000))
    mem = round(float(opts["memory"]) / MB) if opts.get("memory") else DEFAULT_MEM_MB
    mem = max(1, mem)
    replicas = int(d.get("target_num_replicas") or cfg.get("num_replicas") or 1)
    auto = cfg.get("autoscaling_config") or {}
    lo = auto.get("min_replicas")
    hi = auto.get("max_replicas")
    defaults = StageSpec(name=str(d["name"]))
    try:
        return StageSpec(
            name=str(d["name"]), kind=StageKind.GPU if gpus > 0 else StageKind.CPU,
            cpu_m_min=min(defaults.cpu_m_min, cpu_m), cpu_m_max=max(defaults.cpu_m_max, cpu_m),
            mem_mb_min=min(defaults.mem_mb_min, mem), mem_mb_max=max(defaults.mem_mb_max, mem),
            replicas_min=int(lo) if lo is not None else None,
            replicas_max=int(hi) if hi is not None else None,
            gpus_per_replica=gpus if gpus > 0 else 1.0,
            initial=StageAllocation(replicas=replicas, cpu_m=cpu_m, mem_mb=mem))
    except SpecError as e:
        raise DiscoveryError(f"deployment {d.get('name')!r}: {e}") from None


def discover_pipeline(app_details: Mapping[str, Any], *, app: str, sla_ms: float,
                      cluster: ClusterResources, stages: Sequence[str] = ()) -> PipelineSpec:
    """The app's pipeline as Serve runs it (see the module docstring)."""
    if not sla_ms > 0:
        raise DiscoveryError(
            f"app {app!r} has no profile, so SAIR needs its latency target: pass --sla-ms "
            "(sair attach), set pipeline.sla_ms in the SAIR config, or `sla_ms` in the "
            "policy_kwargs of sair_ray.serve:SAIRPolicy")
    deps = app_details.get("deployments") or {}
    order = stage_order(app_details, stages)
    if not order:
        raise DiscoveryError(f"Serve application {app!r} has no deployments yet")
    try:
        return PipelineSpec(name=app, stages=tuple(stage_from_deployment(deps[n])
                                                   for n in order),
                            sla_ms=float(sla_ms), cluster=cluster)
    except SpecError as e:
        raise DiscoveryError(f"app {app!r}: {e}") from None


def parse_stage_list(text: str) -> list[str]:
    """`pipeline.stages` ("a, b,c") as a list."""
    return [s.strip() for s in text.split(",") if s.strip()]

"""Small builders for test pipelines and contexts (real types, no mocks)."""

from __future__ import annotations

from sair_ray.types import (
    ClusterResources,
    Context,
    PipelineSpec,
    StageAllocation,
    StageKind,
    StageObservation,
    StageSpec,
)


def pipeline(cluster: ClusterResources | None = None, sla_ms: float = 500.0) -> PipelineSpec:
    return PipelineSpec(
        name="imgcls",
        stages=(
            StageSpec("preprocess", StageKind.CPU, cpu_m_min=250, cpu_m_max=4000,
                      mem_mb_min=256, mem_mb_max=8192),
            StageSpec("inference", StageKind.GPU, gpus_per_replica=1.0,
                      initial=StageAllocation(1, 2000, 4096, 1.0)),
            StageSpec("postprocess", StageKind.CPU),
        ),
        sla_ms=sla_ms,
        cluster=cluster or ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=2),
    )


def context(p: PipelineSpec | None = None, *, time: float = 0.0, p99: float = 300.0,
            arrival: float = 20.0, alloc: dict[str, StageAllocation] | None = None,
            util: dict[str, float] | None = None, queue: dict[str, float] | None = None,
            stage_p99: dict[str, float] | None = None,
            throughput: float = 20.0) -> Context:
    p = p or pipeline()
    alloc = alloc or p.initial_allocation()
    util, queue, stage_p99 = util or {}, queue or {}, stage_p99 or {}
    stages = tuple(
        StageObservation(
            name=s.name, kind=s.kind, replicas=alloc[s.name].replicas,
            cpu_m=alloc[s.name].cpu_m, mem_mb=alloc[s.name].mem_mb, rate=alloc[s.name].rate,
            queue=queue.get(s.name, 0.0), util=util.get(s.name, 0.5),
            p50_ms=stage_p99.get(s.name, 50.0) / 2, p99_ms=stage_p99.get(s.name, 50.0),
            queue_delay_ms=0.0, throughput_rps=throughput)
        for s in p.stages)
    return Context(app=p.name, time=time, stages=stages, arrival_rate=arrival, p50_ms=p99 / 2,
                   p99_ms=p99, sla_ms=p.sla_ms)

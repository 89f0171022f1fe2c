"""Requests for baseline policies built from real types."""

from __future__ import annotations

from dataclasses import replace

from sair_ray.policy.base import PolicyRequest
from sair_ray.types import ClusterResources, Context, PipelineSpec, StageAllocation
from tests.factories import context, pipeline


def request(now: float = 0.0, p: PipelineSpec | None = None, **ctx_kw) -> PolicyRequest:
    p = p or pipeline()
    return PolicyRequest(now=now, context=context(p, time=now, **ctx_kw), pipeline=p,
                         free=ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=2))


def with_stage(ctx: Context, name: str, **changes) -> Context:
    stages = tuple(replace(s, **changes) if s.name == name else s for s in ctx.stages)
    return replace(ctx, stages=stages)


def alloc(replicas: int, cpu_m: int = 1000, mem_mb: int = 1024,
          rate: float = 1.0) -> StageAllocation:
    return StageAllocation(replicas, cpu_m, mem_mb, rate)

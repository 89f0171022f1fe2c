"""Small helpers shared by the baselines: feasible ranges. Proposal entries come from
`sair_ray.proposal`, as for every policy."""

from __future__ import annotations

from sair_ray.config import ValidatorConfig
from sair_ray.types import PipelineSpec, StageLimits


def limits(pipeline: PipelineSpec, validator: ValidatorConfig | None) -> dict[str, StageLimits]:
    v = validator or ValidatorConfig()
    return {s.name: s.limits(v) for s in pipeline.stages}


def clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


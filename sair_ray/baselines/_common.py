"""Small helpers shared by the baselines: feasible ranges and proposal entries
(docs/algorithm.md §6)."""

from __future__ import annotations

from typing import Any

from sair_ray.config import ValidatorConfig
from sair_ray.types import PipelineSpec, StageLimits


def limits(pipeline: PipelineSpec, validator: ValidatorConfig | None) -> dict[str, StageLimits]:
    v = validator or ValidatorConfig()
    return {s.name: s.limits(v) for s in pipeline.stages}


def clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def replicas_entry(n: int, current: int) -> dict[str, Any]:
    if n == current:
        return {"action": "none"}
    return {"action": "scale_replicas", "replicas": int(n)}


def none_entry() -> dict[str, Any]:
    return {"action": "none"}

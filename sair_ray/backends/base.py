"""The Backend port: how the controller sees and changes a pipeline.

The controller never reads a clock; every call gets `now` from the caller, so the same
controller runs on the simulator in virtual time and on Ray Serve in real time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from sair_ray.types import ClusterResources, Context, PipelineSpec, StageAllocation


@runtime_checkable
class Backend(Protocol):
    @property
    def pipeline(self) -> PipelineSpec:
        """The pipeline this backend serves (stages, limits, SLA, cluster capacity)."""
        ...

    def observe(self, start: float, end: float) -> Context:
        """Metrics over the window [start, end) and the allocation in force at `end`."""
        ...

    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        """Move every stage to its target allocation (stages absent are left alone)."""
        ...

    def free_resources(self) -> ClusterResources:
        """Cluster capacity not allocated to anything right now."""
        ...

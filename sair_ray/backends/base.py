"""The Backend port: how the controller sees and changes a pipeline.

The controller never reads a clock; every call gets `now` from the caller, so the same
controller runs on the simulator in virtual time and on Ray Serve in real time.

A backend may also have optional capabilities, which the host of a controller
(`sair_ray.session.Session`) uses when present: `AdoptsExternalChanges` for a pipeline that
others change too, `ReportsEvents` for what happened between rounds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

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


class BackendEvent(Protocol):
    """Something a backend saw between rounds: a stage changed by someone else, an
    actuation that failed. `to_dict()` is its decision-log record."""

    @property
    def stage(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class AdoptsExternalChanges(Protocol):
    """Optional: a pipeline that others may change too (a user's redeploy)."""

    def sync(self, now: float) -> Sequence[BackendEvent]:
        """Read the deployed allocation, adopt what changed without SAIR as the status quo
        and return those changes (they are also queued in `external_changes`)."""
        ...


@runtime_checkable
class ReportsEvents(Protocol):
    """Optional: events queued between rounds, which the host moves to the decision log."""

    external_changes: deque[Any]    # of BackendEvent: changes SAIR did not make
    actuation_errors: deque[Any]    # of BackendEvent: applies that failed for a stage

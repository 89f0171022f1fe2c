"""Domain types shared by every part of SAIR: pipelines, observations, actions, experiences.

Values are frozen dataclasses. Everything that crosses a process or disk boundary
(contexts, actions, experiences) has `to_dict` / `from_dict` with plain JSON types, so the
decision log and the memory can be replayed without this code's classes. The record of a
whole round is `sair_ray.decision.Decision`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from sair_ray.config import ValidatorConfig


class StageKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class SpecError(ValueError):
    """A pipeline or stage description is inconsistent."""


# Names go verbatim into the policy LLM's prompt and into metric labels: a plain charset
# keeps instructions ("ignore previous ...") and markup out of both.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpecError(f"{kind} name {name!r} is not allowed: use 1-64 letters, digits, "
                        "'_', '.' or '-', starting with a letter or digit")


@dataclass(frozen=True)
class StageAllocation:
    """What one stage is given: replicas, per-replica CPU/memory, GPU rate ratio.

    CPU stages always carry rate 1.0 (nothing throttles them).
    """

    replicas: int
    cpu_m: int
    mem_mb: int
    rate: float = 1.0


Allocation = dict[str, StageAllocation]


@dataclass(frozen=True)
class StageLimits:
    """The feasible box of one stage: its spec's limits intersected with the validator's."""

    replicas_min: int
    replicas_max: int
    cpu_m_min: int
    cpu_m_max: int
    mem_mb_min: int
    mem_mb_max: int
    rate_min: float
    rate_max: float


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline and the range SAIR may move it in.

    `replicas_min/max` of None defer to the validator's global range; GPU stages keep
    their CPU/memory fixed (docs/algorithm.md §6 gives them no resource action) but still pay
    for them.
    """

    name: str
    kind: StageKind = StageKind.CPU
    cpu_m_min: int = 250
    cpu_m_max: int = 4000
    mem_mb_min: int = 256
    mem_mb_max: int = 8192
    replicas_min: int | None = None
    replicas_max: int | None = None
    gpus_per_replica: float = 1.0
    queue_max: int = 1000
    initial: StageAllocation = StageAllocation(replicas=1, cpu_m=1000, mem_mb=1024)
    # a GPU stage whose rate nothing can move (its replicas load no cuda_tb shim): the
    # rate range collapses to this value, so no rate change is ever proposed for it
    rate_pinned: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StageKind(self.kind))
        check_name("stage", self.name)
        where = f"stage {self.name!r}"
        if not 0 < self.cpu_m_min <= self.cpu_m_max:
            raise SpecError(f"{where}: need 0 < cpu_m_min <= cpu_m_max "
                            f"(got {self.cpu_m_min}, {self.cpu_m_max})")
        if not 0 < self.mem_mb_min <= self.mem_mb_max:
            raise SpecError(f"{where}: need 0 < mem_mb_min <= mem_mb_max "
                            f"(got {self.mem_mb_min}, {self.mem_mb_max})")
        if (self.replicas_min is not None and self.replicas_max is not None
                and self.replicas_min > self.replicas_max):
            raise SpecError(f"{where}: replicas_min ({self.replicas_min}) > "
                            f"replicas_max ({self.replicas_max})")
        if self.queue_max < 1:
            raise SpecError(f"{where}: queue_max must be >= 1")
        if self.is_gpu and not self.gpus_per_replica > 0:
            raise SpecError(f"{where}: gpus_per_replica must be > 0 for a GPU stage")
        if self.rate_pinned is not None and not (self.is_gpu and 0 < self.rate_pinned <= 1):
            raise SpecError(f"{where}: rate_pinned must be in (0, 1] and only on a GPU stage")

    @property
    def is_gpu(self) -> bool:
        return self.kind is StageKind.GPU

    def limits(self, v: ValidatorConfig) -> StageLimits:
        lo = v.replicas_min if self.replicas_min is None else max(v.replicas_min,
                                                                  self.replicas_min)
        hi = v.replicas_max if self.replicas_max is None else min(v.replicas_max,
                                                                  self.replicas_max)
        if lo > hi:
            raise SpecError(f"stage {self.name!r}: replica range [{lo}, {hi}] is empty once "
                            "intersected with the validator's")
        if not self.is_gpu:
            rate_lo = rate_hi = 1.0
        elif self.rate_pinned is not None:
            rate_lo = rate_hi = self.rate_pinned
        else:
            rate_lo, rate_hi = v.rate_min, v.rate_max
        return StageLimits(lo, hi, self.cpu_m_min, self.cpu_m_max, self.mem_mb_min,
                           self.mem_mb_max, rate_lo, rate_hi)


@dataclass(frozen=True)
class ClusterResources:
    """Cluster capacity (or what is free of it): CPUs in cores, memory in MB, GPUs."""

    cpus: float
    memory_mb: float
    gpus: float


@dataclass(frozen=True)
class PipelineSpec:
    """A chain of stages served as one application, with its end-to-end SLA."""

    name: str
    stages: tuple[StageSpec, ...]
    sla_ms: float
    cluster: ClusterResources = ClusterResources(cpus=64, memory_mb=256 * 1024, gpus=2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        check_name("pipeline", self.name)
        if not self.stages:
            raise SpecError(f"pipeline {self.name!r} has no stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise SpecError(f"pipeline {self.name!r}: duplicate stage names {names}")
        if not (isinstance(self.sla_ms, int | float) and math.isfinite(self.sla_ms)
                and self.sla_ms > 0):
            raise SpecError(f"pipeline {self.name!r}: sla_ms must be > 0 (got {self.sla_ms})")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"pipeline {self.name!r} has no stage {name!r}; "
                       f"stages: {', '.join(self.stage_names)}")

    def initial_allocation(self) -> Allocation:
        return {s.name: s.initial if s.is_gpu else replace(s.initial, rate=1.0)
                for s in self.stages}


@dataclass(frozen=True)
class StageObservation:
    """One stage over one measurement window (docs/algorithm.md §2)."""

    name: str
    kind: StageKind
    replicas: int
    cpu_m: int
    mem_mb: int
    rate: float = 1.0
    queue: float = 0.0           # input queue depth at window end
    util: float = 0.0            # CPU: cpu-seconds per allocated core; GPU: active/wall / rate
    p50_ms: float = 0.0          # processing latency
    p99_ms: float = 0.0
    queue_delay_ms: float = 0.0  # mean wait in the input queue
    throughput_rps: float = 0.0
    # the replicas `util` is an average over, those able to serve (the simulator: averaged
    # over the window; live: healthy at its end); replicas still starting are in `replicas`
    # but passed nothing; 0 where the backend cannot tell
    serving: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StageKind(self.kind))

    @property
    def allocation(self) -> StageAllocation:
        return StageAllocation(self.replicas, self.cpu_m, self.mem_mb, self.rate)


@dataclass(frozen=True)
class Context:
    """The round's observation s_t (docs/algorithm.md §2): per-stage and global metrics."""

    app: str
    time: float
    stages: tuple[StageObservation, ...]
    arrival_rate: float
    p50_ms: float
    p99_ms: float
    sla_ms: float
    errors: int = 0
    drops: int = 0
    cost_rate: float = 0.0  # $/h of the allocation in force
    # what the metrics source could not see this round (e.g. a stage whose replicas have
    # not reported yet): the context is partial, those figures read as zero/unknown
    partial: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "partial", tuple(self.partial))

    def stage(self, name: str) -> StageObservation:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def allocation(self) -> Allocation:
        return {s.name: s.allocation for s in self.stages}

    @property
    def violation(self) -> float:
        """SLA violation severity v = max(0, l/L - 1) (docs/algorithm.md §3)."""
        return max(0.0, self.p99_ms / self.sla_ms - 1.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [{**asdict(s), "kind": s.kind.value} for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Context:
        stages = tuple(StageObservation(**s) for s in d["stages"])
        return cls(**{**d, "stages": stages})


@dataclass(frozen=True)
class StageDelta:
    """A validated change to one stage, relative to its current allocation."""

    replicas: int = 0
    cpu_m: int = 0
    mem_mb: int = 0
    rate: float = 0.0

    @property
    def is_noop(self) -> bool:
        return self.replicas == 0 and self.cpu_m == 0 and self.mem_mb == 0 and self.rate == 0

    def apply(self, a: StageAllocation) -> StageAllocation:
        return StageAllocation(a.replicas + self.replicas, a.cpu_m + self.cpu_m,
                               a.mem_mb + self.mem_mb, round(a.rate + self.rate, 6))


@dataclass(frozen=True)
class Action:
    """A whole-pipeline action: one delta per stage (stages absent are no-ops)."""

    deltas: Mapping[str, StageDelta] = field(default_factory=dict)

    @property
    def is_noop(self) -> bool:
        return all(d.is_noop for d in self.deltas.values())

    def delta(self, stage: str) -> StageDelta:
        return self.deltas.get(stage, StageDelta())

    def apply(self, allocation: Mapping[str, StageAllocation]) -> Allocation:
        return {name: self.delta(name).apply(a) for name, a in allocation.items()}

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {name: asdict(d) for name, d in self.deltas.items() if not d.is_noop}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> Action:
        return cls({name: StageDelta(**v) for name, v in d.items()})


@dataclass(frozen=True)
class Experience:
    """One remembered round: context, the action taken, and how it turned out
    (docs/algorithm.md §4)."""

    id: str
    time: float
    app: str
    phi: Sequence[float]
    context: Mapping[str, Any]
    action: Mapping[str, Any]
    reward: float
    latency_ms: float
    cost_rate: float

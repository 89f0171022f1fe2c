"""The action validator (docs/algorithm.md §7, paper Appendix D): the only path from a proposal
to actuation.

It is total: any input, however malformed (wrong types, NaN, 1e300, strings, unknown or
missing stages), yields a feasible `Action` and never raises. Each proposal goes through,
per stage and dimension:

1. parse: the JSON shape of §6, absolute targets; the `action` verb selects dimensions;
2. range: the target is clamped into the stage's limits;
3. step: target - current is clamped to the per-step maximum (absolute-to-delta mapping);
4. cooldown: a scale-up (down) of a stage within `cooldown_up_s` (`cooldown_down_s`) of its
   previous scale-up (down) becomes a no-op;
5. cluster: increases that would exceed the cluster's free CPUs, memory or GPUs are cut
   down, stages in pipeline order, replicas first. Scale-downs are not credited to other
   stages' increases: a rolling restart holds both old and new replicas for a while.

Every change the validator makes to the proposal is reported as a `Clamp`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sair_ray.config import ValidatorConfig
from sair_ray.proposal import ACTION, FIELDS, VERBS
from sair_ray.types import (
    Action,
    Allocation,
    ClusterResources,
    PipelineSpec,
    StageAllocation,
    StageDelta,
    StageLimits,
    StageSpec,
)

log = logging.getLogger(__name__)

# The keys and verbs a proposal may use are defined once, in `sair_ray.proposal`.
CPU_DIMS = frozenset({"replicas", "cpu_m", "mem_mb"})
GPU_DIMS = frozenset({"replicas", "rate"})


@dataclass(frozen=True)
class Clamp:
    stage: str
    field: str
    proposed: Any
    result: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "field": self.field, "proposed": _jsonable(self.proposed),
                "result": self.result, "reason": self.reason}


@dataclass(frozen=True)
class Validated:
    action: Action
    targets: Allocation
    clamps: tuple[Clamp, ...] = ()


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, bool | int | str):
        return x if not isinstance(x, str) else x[:200]
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return repr(x)[:200]


def parse_number(x: Any) -> float | None:
    """A finite number from an int, float or numeric string; None for anything else."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return float(x) if abs(x) < 1e300 else math.copysign(1e300, x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str) and len(x) < 64:
        try:
            v = float(x.strip())
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def cooldown_slack_s(cooldown_s: float) -> float:
    """How much earlier than `cooldown_s` a round may come and still count as past it.

    Rounds are due a fixed interval apart but a live controller's clock readings jitter
    by microseconds to milliseconds; with a cooldown equal to a multiple of the interval,
    a round read 7 us early would otherwise be refused and the next scale-up wait a whole
    extra interval, at random. Half a second (at most 5 % of the cooldown, so a short
    cooldown keeps its meaning) is far above that jitter and far below any interval.
    """
    return min(0.5, 0.05 * cooldown_s)


@dataclass
class Cooldowns:
    """When each stage last scaled up and down (any dimension), for the cooldowns of §7."""

    last_up: dict[str, float] = field(default_factory=dict)
    last_down: dict[str, float] = field(default_factory=dict)

    def blocks(self, stage: str, direction: int, now: float, v: ValidatorConfig) -> bool:
        if direction > 0:
            t, cooldown = self.last_up.get(stage), v.cooldown_up_s
        else:
            t, cooldown = self.last_down.get(stage), v.cooldown_down_s
        return t is not None and now - t < cooldown - cooldown_slack_s(cooldown)

    def record(self, action: Action, now: float) -> None:
        for stage, d in action.deltas.items():
            dims = (d.replicas, d.cpu_m, d.mem_mb, d.rate)
            if any(x > 0 for x in dims):
                self.last_up[stage] = now
            if any(x < 0 for x in dims):
                self.last_down[stage] = now

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"last_up": dict(self.last_up), "last_down": dict(self.last_down)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, float]]) -> Cooldowns:
        return cls(dict(d.get("last_up", {})), dict(d.get("last_down", {})))


class Validator:
    def __init__(self, pipeline: PipelineSpec, cfg: ValidatorConfig,
                 cooldowns: Cooldowns | None = None) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.cooldowns = cooldowns or Cooldowns()
        self._limits = {s.name: s.limits(cfg) for s in pipeline.stages}

    def commit(self, action: Action, now: float) -> None:
        """Start the cooldowns of an action that was actually applied."""
        self.cooldowns.record(action, now)

    def validate(self, proposal: Any, current: Mapping[str, StageAllocation], *, now: float,
                 free: ClusterResources) -> Validated:
        clamps: list[Clamp] = []
        try:
            deltas = self._deltas(proposal, current, now, clamps)
            deltas = self._fit_cluster(deltas, current, free, clamps)
        except Exception as e:  # the validator must be total; a bug here is a no-op
            log.exception("validator internal error; the round becomes a no-op")
            deltas = {}
            clamps.append(Clamp("*", "*", None, None, f"internal error: {e!r}"))
        action = Action({k: d for k, d in deltas.items() if not d.is_noop})
        targets = action.apply({k: current[k] for k in self.pipeline.stage_names
                                if k in current})
        return Validated(action, targets, tuple(clamps))

    # -- steps 1-4: parse, range, step, cooldown ---------------------------------------
    def _deltas(self, proposal: Any, current: Mapping[str, StageAllocation], now: float,
                clamps: list[Clamp]) -> dict[str, StageDelta]:
        if not isinstance(proposal, Mapping):
            if proposal is not None:
                clamps.append(Clamp("*", "proposal", proposal, None,
                                    "proposal is not a JSON object; no-op"))
            return {}
        deltas: dict[str, StageDelta] = {}
        for key, entry in proposal.items():
            name = key if isinstance(key, str) else repr(key)
            if name not in self._limits:
                clamps.append(Clamp(name[:100], "stage", entry, None, "unknown stage; ignored"))
                continue
            if name not in current:
                clamps.append(Clamp(name, "stage", entry, None,
                                    "stage not observed this round; ignored"))
                continue
            if not isinstance(entry, Mapping):
                clamps.append(Clamp(name, "stage", entry, None,
                                    "stage entry is not a JSON object; ignored"))
                continue
            spec = self.pipeline.stage(name)
            dims = self._dims(spec, entry, clamps)
            deltas[name] = self._stage_delta(spec, self._limits[name], current[name], entry,
                                             dims, now, clamps)
        return deltas

    def _dims(self, spec: StageSpec, entry: Mapping[str, Any],
              clamps: list[Clamp]) -> frozenset[str]:
        kind_dims = GPU_DIMS if spec.is_gpu else CPU_DIMS
        verb = entry.get(ACTION)
        if isinstance(verb, str) and verb in VERBS:
            dims = VERBS[verb] & kind_dims
            if VERBS[verb] and not dims:
                clamps.append(Clamp(spec.name, "action", verb, "none",
                                    f"{verb!r} does not apply to a {spec.kind.value} stage"))
            return dims
        if verb is not None:
            clamps.append(Clamp(spec.name, "action", verb, None,
                                "unknown action verb; using the fields present"))
        return frozenset(d for d in kind_dims if FIELDS[d] in entry)

    def _stage_delta(self, spec: StageSpec, lim: StageLimits, cur: StageAllocation,
                     entry: Mapping[str, Any], dims: frozenset[str], now: float,
                     clamps: list[Clamp]) -> StageDelta:
        v = self.cfg
        box = {
            "replicas": (lim.replicas_min, lim.replicas_max, v.max_replica_step, cur.replicas),
            "cpu_m": (lim.cpu_m_min, lim.cpu_m_max, v.max_cpu_step_m, cur.cpu_m),
            "mem_mb": (lim.mem_mb_min, lim.mem_mb_max, v.max_mem_step_mb, cur.mem_mb),
            "rate": (lim.rate_min, lim.rate_max, v.max_rate_step, cur.rate),
        }
        out: dict[str, float] = {}
        for dim in sorted(dims):
            raw = entry.get(FIELDS[dim])
            if raw is None:
                continue
            target = parse_number(raw)
            if target is None:
                clamps.append(Clamp(spec.name, FIELDS[dim], raw, None,
                                    "not a finite number; dimension left unchanged"))
                continue
            lo, hi, step, now_val = box[dim]
            integral = dim != "rate"
            if integral:
                target = float(round(target))
            ranged = min(hi, max(lo, target))
            if ranged != target:
                clamps.append(Clamp(spec.name, FIELDS[dim], raw, _num(ranged, integral),
                                    f"outside [{lo}, {hi}]"))
            delta = ranged - now_val
            stepped = min(step, max(-step, delta))
            if stepped != delta:
                clamps.append(Clamp(spec.name, FIELDS[dim], raw,
                                    _num(now_val + stepped, integral),
                                    f"step {delta:+g} exceeds max step {step:g}"))
            if not integral:
                stepped = round(stepped, 6)
            if stepped != 0 and self.cooldowns.blocks(spec.name, 1 if stepped > 0 else -1,
                                                      now, v):
                which = "scale-up" if stepped > 0 else "scale-down"
                clamps.append(Clamp(spec.name, FIELDS[dim], raw, _num(now_val, integral),
                                    f"{which} cooldown; no-op"))
                stepped = 0
            out[dim] = stepped
        return StageDelta(int(out.get("replicas", 0)), int(out.get("cpu_m", 0)),
                          int(out.get("mem_mb", 0)), float(out.get("rate", 0.0)))

    # -- step 5: cluster limits ---------------------------------------------------------
    def _fit_cluster(self, deltas: dict[str, StageDelta], current: Mapping[str, StageAllocation],
                     free: ClusterResources, clamps: list[Clamp]) -> dict[str, StageDelta]:
        room = [max(0.0, free.cpus * 1000), max(0.0, free.memory_mb), max(0.0, free.gpus)]
        out: dict[str, StageDelta] = {}
        for name in self.pipeline.stage_names:
            if name not in deltas:
                continue
            spec, cur, d = self.pipeline.stage(name), current[name], deltas[name]
            fitted = self._fit_stage(spec, cur, d, room)
            if fitted != d:
                clamps.append(Clamp(name, "cluster", _delta_dict(d), _delta_dict(fitted),
                                    "would exceed the cluster's free CPU/memory/GPUs"))
            need = _need(spec, cur, fitted)
            room = [r - max(0.0, n) for r, n in zip(room, need, strict=True)]
            out[name] = fitted
        return out

    @staticmethod
    def _fit_stage(spec: StageSpec, cur: StageAllocation, d: StageDelta,
                   room: list[float]) -> StageDelta:
        def fits(x: StageDelta) -> bool:
            return all(n <= r + 1e-9 for n, r in zip(_need(spec, cur, x), room, strict=True))

        while not fits(d):
            if d.replicas > 0:
                d = StageDelta(d.replicas - 1, d.cpu_m, d.mem_mb, d.rate)
            elif d.cpu_m > 0 or d.mem_mb > 0:
                n = cur.replicas + d.replicas
                cpu_cap = int((room[0] + cur.replicas * cur.cpu_m) // max(n, 1)) - cur.cpu_m
                mem_cap = int((room[1] + cur.replicas * cur.mem_mb) // max(n, 1)) - cur.mem_mb
                shrunk = StageDelta(d.replicas, min(d.cpu_m, max(0, cpu_cap)),
                                    min(d.mem_mb, max(0, mem_cap)), d.rate)
                if shrunk == d:  # cannot shrink further: drop every increase of the stage
                    return StageDelta(d.replicas, min(0, d.cpu_m), min(0, d.mem_mb), d.rate)
                d = shrunk
            else:
                return d  # only decreases left: they never need room
        return d


def _need(spec: StageSpec, cur: StageAllocation, d: StageDelta) -> tuple[float, float, float]:
    """Extra (CPU millicores, memory MB, GPUs) the stage needs after the delta."""
    n0, n1 = cur.replicas, cur.replicas + d.replicas
    cpu = n1 * (cur.cpu_m + d.cpu_m) - n0 * cur.cpu_m
    mem = n1 * (cur.mem_mb + d.mem_mb) - n0 * cur.mem_mb
    gpu = (n1 - n0) * spec.gpus_per_replica if spec.is_gpu else 0.0
    return float(cpu), float(mem), float(gpu)


def _num(x: float, integral: bool) -> float | int:
    return int(x) if integral else round(x, 6)


def _delta_dict(d: StageDelta) -> dict[str, float]:
    return {"replicas": d.replicas, "cpu_m": d.cpu_m, "mem_mb": d.mem_mb, "rate": d.rate}


def is_feasible(alloc: StageAllocation, lim: StageLimits) -> bool:
    """True when an allocation lies inside a stage's limits (used by tests and checks)."""
    return (lim.replicas_min <= alloc.replicas <= lim.replicas_max
            and lim.cpu_m_min <= alloc.cpu_m <= lim.cpu_m_max
            and lim.mem_mb_min <= alloc.mem_mb <= lim.mem_mb_max
            and lim.rate_min - 1e-9 <= alloc.rate <= lim.rate_max + 1e-9)

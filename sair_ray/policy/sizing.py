"""Capacity sizing: how much of each stage the measured load needs (the `fit` candidate).

Each stage's per-replica capacity is read off its own window, not a profile: a replica
that passed `x / n` requests per second while busy a share `u` of the time serves
`mu = x / (u n)` requests per second flat out (GPU stages: at its current rate; the rate
stretches GPU time as 1 / r, docs/algorithm.md §8, so at full rate it serves `mu / r`). The
stage must carry the pipeline's arrival rate plus its backlog drained over `DRAIN_S`, at utilisation
`U_TARGET`, leaving room for the variance of arrivals and service that turns a busy
server into a queue (Kingman: waiting grows as u / (1 - u)).

- up: when the stage needs more than it has; replicas first, CPU (GPU: rate, then
  replicas) when replicas are at their limit. Sized to the demand and cut to one
  validator step; a large overload keeps the stage growing every cooldown instead of
  adding a fixed step and waiting for the next violation.
- down: only when the largest demand over the last `SCALE_DOWN_WINDOW_S` (10 minutes,
  Ray Serve's own default `downscale_delay_s`) fits in fewer
  replicas at `U_DOWN`, so the capacity of a burst is not given back between its spikes
  and a stage near a replica boundary does not flap (up above `U_TARGET`, down only to
  where it would stay under `U_DOWN`).
- GPU rate: the smallest rate that carries the demand on the replicas kept, but never so
  low that the stage's worst recent p99, stretched by the slower rate, would exceed
  `LAT_SHARE` of the SLA (effective cost pays r of a GPU; §9).

Nothing is estimated for a stage whose window saw no work (no throughput or no busy time):
it is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sair_ray.config import ValidatorConfig
from sair_ray.proposal import (
    RATE,
    REPLICAS,
    Entry,
    Proposal,
    hold,
    resize,
    scale_replicas,
    set_rate,
)
from sair_ray.types import Context, PipelineSpec, StageKind, StageLimits, StageObservation

U_TARGET = 0.6      # utilisation the stage is sized for
U_HIGH = 0.75       # above this the stage is short of capacity now
U_DOWN = 0.5        # a scale-down must leave the stage at or under this utilisation
DRAIN_S = 60.0      # a backlog is to be cleared within this long, on top of arrivals
LAT_SHARE = 0.5     # a stage's own p99 may use at most this share of the SLA
MIN_BUSY = 0.02     # below this utilisation the window says nothing about capacity
SCALE_DOWN_WINDOW_S = 600.0  # capacity is given back only after this long without its load


@dataclass(frozen=True)
class StageNeed:
    """What one stage needs, in replicas at full rate (GPU) or at its CPU (CPU stages)."""

    stage: str
    capacity_rps: float   # per replica, flat out, at the current CPU / full GPU rate
    demand: float         # replicas' worth of work now (arrivals + backlog) at U_TARGET
    peak_demand: float    # the largest demand over the recent history
    peak_p99_full_ms: float = 0.0  # GPU: the largest stage p99 seen, at full rate


def _load(s: StageObservation, arrival_rate: float) -> float:
    """Requests per second the stage must carry: arrivals and its backlog's drain."""
    return max(arrival_rate, s.throughput_rps) + max(s.queue, 0.0) / DRAIN_S


def _demand(s: StageObservation, arrival_rate: float) -> tuple[float, float]:
    """(per-replica capacity in req/s at full rate, replicas needed at U_TARGET)."""
    busy = max(s.util, 0.0) * s.replicas
    if s.throughput_rps <= 0 or busy < MIN_BUSY or s.replicas < 1:
        return math.nan, math.nan
    mu = s.throughput_rps / busy
    if s.kind == StageKind.GPU:
        mu /= max(s.rate, 1e-3)
    return mu, _load(s, arrival_rate) / (mu * U_TARGET)


def needs(ctx: Context, history: Sequence[Context] = ()) -> dict[str, StageNeed]:
    """Each stage's need now and at its recent peak; stages without a capacity estimate
    are left out."""
    out: dict[str, StageNeed] = {}
    for s in ctx.stages:
        mu, demand = _demand(s, ctx.arrival_rate)
        if not math.isfinite(demand):
            continue
        peak, p99_full = demand, _p99_full(s)
        for past in history:
            if past.time < ctx.time - SCALE_DOWN_WINDOW_S:
                continue
            try:
                p = past.stage(s.name)
            except KeyError:
                continue
            # past load on today's capacity estimate: the capacity of a replica changes
            # with its allocation, the work a request needs does not
            peak = max(peak, _load(p, past.arrival_rate) / (mu * U_TARGET))
            p99_full = max(p99_full, _p99_full(p))
        out[s.name] = StageNeed(s.name, mu, demand, peak, p99_full)
    return out


def _p99_full(s: StageObservation) -> float:
    """A GPU stage's p99 scaled to full rate (§8 stretches GPU time as 1 / r)."""
    if s.kind != StageKind.GPU or not math.isfinite(s.p99_ms):
        return 0.0
    return max(s.p99_ms, 0.0) * s.rate


def fit(ctx: Context, pipeline: PipelineSpec, v: ValidatorConfig,
        history: Sequence[Context] = ()) -> Proposal:
    """Per stage, a §6 action sizing it to its need (`hold()` where it already fits or
    nothing can be estimated)."""
    need = needs(ctx, history)
    out: Proposal = {}
    for s in ctx.stages:
        n = need.get(s.name)
        lim = pipeline.stage(s.name).limits(v)
        out[s.name] = (hold() if n is None else
                       _one_step(_fit_gpu(s, n, lim, ctx.sla_ms), s, v)
                       if s.kind == StageKind.GPU else _one_step(_fit_cpu(s, n, lim, v), s, v))
    return out


def _one_step(action: Entry, s: StageObservation, v: ValidatorConfig) -> Entry:
    """The action cut to one validator step, so the candidate shows what will happen; the
    rest of the way comes in later rounds, from a fresh measurement."""
    out = dict(action)
    if REPLICAS in out:
        out[REPLICAS] = min(max(out[REPLICAS], s.replicas - v.max_replica_step),
                            s.replicas + v.max_replica_step)
    if RATE in out:
        out[RATE] = round(min(max(out[RATE], s.rate - v.max_rate_step),
                              s.rate + v.max_rate_step), 2)
    return out


def _fit_cpu(s: StageObservation, n: StageNeed, lim: StageLimits, v: ValidatorConfig) -> Entry:
    if s.util > U_HIGH or n.demand > s.replicas:
        want = math.ceil(n.demand)
        if want > s.replicas and s.replicas < lim.replicas_max:
            return scale_replicas(min(lim.replicas_max, want))
        if s.replicas >= lim.replicas_max and s.cpu_m < lim.cpu_m_max:
            return resize(min(lim.cpu_m_max, s.cpu_m + v.max_cpu_step_m), s.mem_mb)
        return hold()
    keep = _keep(n, lim)
    if keep < s.replicas:
        return scale_replicas(keep)
    return hold()


def _keep(n: StageNeed, lim: StageLimits) -> int:
    """The fewest replicas that carry the recent peak at no more than U_DOWN."""
    return max(lim.replicas_min, math.ceil(n.peak_demand * U_TARGET / U_DOWN - 1e-9))


def _fit_gpu(s: StageObservation, n: StageNeed, lim: StageLimits, sla_ms: float) -> Entry:
    # the rate below which the stage's p99 (stretched as 1/r) would crowd the SLA; from
    # the worst recent window, since one window's p99 of a heavy-tailed stage is noisy
    floor = lim.rate_min
    if sla_ms > 0:
        floor = min(lim.rate_max, max(floor, n.peak_p99_full_ms / (LAT_SHARE * sla_ms)))
    if s.util > U_HIGH or n.demand > s.replicas * s.rate:
        if s.rate < lim.rate_max - 1e-9:
            want = max(floor, min(lim.rate_max, n.demand / s.replicas))
            return set_rate(round(max(want, s.rate), 2))
        want = math.ceil(n.demand)
        if want > s.replicas and s.replicas < lim.replicas_max:
            return scale_replicas(min(lim.replicas_max, want))
        return hold()
    keep = _keep(n, lim)
    if keep < s.replicas:
        return scale_replicas(keep)
    rate = round(max(floor, min(lim.rate_max, n.peak_demand * U_TARGET / U_DOWN / s.replicas)), 2)
    if rate < s.rate - 1e-9:
        return set_rate(rate)
    return hold()

"""Capacity sizing: how much of each stage the measured load needs (the `fit` candidate).

Each stage's per-replica capacity is read off its own window, not a profile: each of `n`
serving replicas (not those still starting) that passed `x / n` requests per second while
busy a share `u` of the time serves `mu = x / (u n)` requests per second flat out (a share
read above 1 is a measurement artefact of a replica starting or batching, and counts as 1;
GPU stages: at its current rate; the rate stretches GPU time as 1 / r, docs/algorithm.md
§8, so at full rate it serves `mu / r`). The stage must carry the pipeline's arrival rate
plus its backlog drained over `DRAIN_S` (a CPU stage: arrivals, not the window's
throughput: a stage draining a backlog passes more than arrives, and that backlog is
already counted). No stage is sized to carry more than the pipeline can pass: once a stage
that can grow no further (a GPU stage on every GPU it can get, a CPU stage at its replica
and CPU limits) has been busy with requests waiting, a stage after it counts arrivals only
up to what it passes flat out (its own backlog on top), and a stage before it carries no
more than that in all (`_ceilings`).

How hot a CPU stage may run follows from the SLA, not from a fixed utilisation: the
stages' p99 queueing waits may use `WAIT_SHARE` of the SLA together, each stage a share in
proportion to its service time (`1 / mu`; stages whose replica count cannot move are left
out), and a CPU stage is sized for the highest utilisation, between `U_TARGET` and
`U_MAX`, at which its p99 wait stays within its share. The wait is that of an M/M/c queue,
its probability of waiting taken from Sakasegawa's approximation of Erlang C
(`u ** (sqrt(2 (c + 1)) - 1)`) and its tail exponential at rate `c mu (1 - u)`: many
replicas or a loose SLA run hot, one replica under a tight SLA at `U_TARGET`. A GPU stage
is sized at `U_TARGET` and is short above `U_HIGH`: its rate already trades latency for
cost, and a replica more is a whole GPU; at full rate it gets that replica only while its
requests measurably wait (`_quiet`: a batching stage reads busy long before they do).

- up: when the stage needs more than it has; replicas first, CPU (GPU: rate, then
  replicas) when replicas are at their limit. Sized to the demand and cut to one
  validator step; a large overload keeps the stage growing every cooldown instead of
  adding a fixed step and waiting for the next violation.
- down: only when the largest load over the last `SCALE_DOWN_WINDOW_S` (10 minutes,
  Ray Serve's own default `downscale_delay_s`) fits in fewer replicas at `U_DOWN`, so the
  capacity of a burst is not given back between its spikes and a stage near a replica
  boundary does not flap. This rule does not follow the SLA: kept hotter, a burst's next
  spike starts short (simulated image-classification burst, 1 h x 3 seeds: steady
  attainment 0.999 -> 0.983 with a scale-down rule of 50-75 % at half the wait budget).
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

U_TARGET = 0.6      # the coolest a stage is sized for (a tight SLA)
U_MAX = 0.9         # the hottest a stage is ever sized for (a loose SLA, many replicas)
U_HIGH = 0.75       # GPU stages: above this the stage is short of capacity now
U_DOWN = 0.5        # a scale-down must leave the stage at or under this at its recent peak
WAIT_SHARE = 0.5    # the stages' p99 queueing waits together may use this share of the SLA
DRAIN_S = 60.0      # a backlog is to be cleared within this long, on top of arrivals
LAT_SHARE = 0.5     # a stage's own p99 may use at most this share of the SLA
MIN_BUSY = 0.02     # below this utilisation the window says nothing about capacity
SCALE_DOWN_WINDOW_S = 600.0  # capacity is given back only after this long without its load
WAIT_QUANTILE = 0.01         # the wait budget is for the 99th percentile
QUIET_SHARE = 0.1   # GPU: a mean wait under this share of the budget is no shortage


@dataclass(frozen=True)
class StageNeed:
    """What one stage needs, in replicas at full rate (GPU) or at its CPU (CPU stages)."""

    stage: str
    capacity_rps: float   # per replica, flat out, at the current CPU / full GPU rate
    demand: float         # replicas the work now (arrivals + backlog) needs, sized up
    peak_p99_full_ms: float  # GPU: the largest stage p99 seen, at full rate
    keep: float           # replicas the recent peak needs under the scale-down rule
    wait_budget_s: float = 0.0  # the stage's share of the SLA's queueing budget


def p99_wait_s(offered: float, replicas: float, mu: float) -> float:
    """The p99 queueing wait (seconds) of `replicas` servers of `mu` req/s each carrying
    `offered` replicas' worth of work (M/M/c, Sakasegawa's Erlang C); inf at or past
    saturation."""
    c = max(replicas, 1.0)
    u = offered / c
    if u >= 1.0:
        return math.inf
    if u <= 0.0:
        return 0.0
    waits = min(1.0, u ** (math.sqrt(2.0 * (c + 1.0)) - 1.0))
    if waits <= WAIT_QUANTILE:
        return 0.0
    return math.log(waits / WAIT_QUANTILE) / (c * mu * (1.0 - u))


def replicas_for(load_rps: float, mu: float, budget_s: float, u_lo: float,
                 u_hi: float) -> float:
    """Replicas (continuous) that carry `load_rps` at the highest utilisation in
    [`u_lo`, `u_hi`] whose p99 wait stays within `budget_s`."""
    offered = load_rps / mu
    if offered <= 0:
        return 0.0

    def fits(u: float) -> bool:
        return p99_wait_s(offered, offered / u, mu) <= budget_s

    if fits(u_hi):
        return offered / u_hi
    if not fits(u_lo):
        return offered / u_lo
    lo, hi = u_lo, u_hi          # fits(lo), not fits(hi): the wait grows with u
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return offered / lo


def _load(s: StageObservation, arrival_rate: float, reach: float = math.inf,
          onward: float = math.inf) -> float:
    """Requests per second the stage must carry: arrivals and its backlog's drain. A CPU
    stage passing more than arrives is draining a backlog its queue already counts; a GPU
    stage keeps the larger of the two, the rule its fixed target was measured with
    (without it, simulated text generation ramp, 1 h x 3 seeds: steady attainment 0.991
    -> 0.988: a generation stage's requests in service are not in its queue). Arrivals
    count up to `reach`, what the stages before it can pass; the whole up to `onward`,
    what the stages after it can take (`_ceilings`)."""
    arrivals = max(arrival_rate, s.throughput_rps) if s.kind == StageKind.GPU \
        else arrival_rate
    return min(min(max(arrivals, 0.0), reach) + max(s.queue, 0.0) / DRAIN_S, onward)


def _capacity(s: StageObservation) -> float:
    """Per-replica capacity in req/s flat out, at full rate for a GPU stage (nan where the
    window says nothing). Busy time is utilisation times the replicas that served: a
    replica still starting passed nothing, and counting it as busy reads every serving
    replica as slower than it is, so a stage that has just been given replicas reads short
    again before they arrive, and asks for more."""
    serving = s.serving if s.serving > 0 else s.replicas
    busy = min(max(s.util, 0.0), 1.0) * serving
    if s.throughput_rps <= 0 or busy < MIN_BUSY or s.replicas < 1:
        return math.nan
    mu = s.throughput_rps / busy
    if s.kind == StageKind.GPU:
        mu /= max(s.rate, 1e-3)
    return mu


def _budgets(ctx: Context, mu: dict[str, float], pipeline: PipelineSpec,
             v: ValidatorConfig) -> dict[str, float]:
    """Each movable stage's p99 wait budget in seconds: its service time's share of
    `WAIT_SHARE` of the SLA."""
    service = {}
    for s in ctx.stages:
        lim = pipeline.stage(s.name).limits(v)
        if s.name in mu and lim.replicas_max > lim.replicas_min:
            # a GPU stage waits on its service at the rate in force
            rate = max(s.rate, 1e-3) if s.kind == StageKind.GPU else 1.0
            service[s.name] = 1.0 / (mu[s.name] * rate)
    total = sum(service.values())
    sla_s = ctx.sla_ms / 1000.0
    return {k: WAIT_SHARE * sla_s * t / total for k, t in service.items()} if total > 0 \
        else {}


def needs(ctx: Context, pipeline: PipelineSpec, v: ValidatorConfig,
          history: Sequence[Context] = ()) -> dict[str, StageNeed]:
    """Each stage's need now and at its recent peak; stages without a capacity estimate
    are left out."""
    mu = {s.name: m for s in ctx.stages if math.isfinite(m := _capacity(s))}
    budget = _budgets(ctx, mu, pipeline, v)
    recent = [c for c in history if c.time >= ctx.time - SCALE_DOWN_WINDOW_S]
    ceilings = _ceilings([*recent, ctx], pipeline, v)
    rank = {n: i for i, n in enumerate(pipeline.stage_names)}
    out: dict[str, StageNeed] = {}
    for s in ctx.stages:
        if s.name not in mu:
            continue
        m, b = mu[s.name], budget.get(s.name, 0.0)
        # what the stages that can grow no more let reach this one, and take from it
        reach = min((c for k, c in ceilings.items() if rank[k] < rank[s.name]),
                    default=math.inf)
        onward = min((c for k, c in ceilings.items() if rank[k] > rank[s.name]),
                     default=math.inf)
        load = peak = _load(s, ctx.arrival_rate, reach, onward)
        p99_full = _p99_full(s)
        for past in recent:
            try:
                p = past.stage(s.name)
            except KeyError:
                continue
            # past load on today's capacity estimate: the capacity of a replica changes
            # with its allocation, the work a request needs does not
            peak = max(peak, _load(p, past.arrival_rate, reach, onward))
            p99_full = max(p99_full, _p99_full(p))
        # a GPU stage keeps the fixed target: its rate already trades latency for cost
        # (the LAT_SHARE floor), and a replica more is a whole GPU
        demand = load / (m * U_TARGET) if s.kind == StageKind.GPU else \
            replicas_for(load, m, b, U_TARGET, U_MAX)
        out[s.name] = StageNeed(s.name, m, demand, p99_full, peak / (m * U_DOWN), b)
    return out


def _ceilings(windows: Sequence[Context], pipeline: PipelineSpec,
              v: ValidatorConfig) -> dict[str, float]:
    """Per stage that can grow no further, the requests per second it passes flat out,
    pooled over the `windows` in which it was at its limit, busy (over `U_HIGH`) and with
    requests waiting: what it passed over the replica-time it was busy (at full rate for a
    GPU stage), times its replicas. Pooled, not the largest window's: a window of a
    heavy-tailed stage sees a handful of requests, and the largest of 40 such readings is
    mostly noise. Requests beyond that pile up in front of it whatever the other stages
    have, so sizing another stage for them buys no throughput, only moves the queue (live
    video_analysis burst: 0.75 clips/s arriving, at most 0.67/s through the 2 GPUs, the CPU
    stages before and after them scaled to 7 and 6 replicas at utilisation 0.1-0.3). Only
    busy windows count: a batching stage passes more as its batches grow, so a quiet window,
    even one with a request waiting, understates what it can pass (simulated nlp_analysis
    burst without episodes, counting every window with a queue: steady attainment 0.997 ->
    0.981, the encoder's quiet windows capping the stages around it below the next spike)."""
    passed: dict[str, float] = {}
    busy: dict[str, float] = {}
    replicas: dict[str, int] = {}
    for ctx in windows:
        for s in ctx.stages:
            m = _capacity(s)
            if (s.queue < 1.0 or s.util < U_HIGH or not math.isfinite(m)
                    or not _at_limit(s, ctx, pipeline, v)):
                continue
            passed[s.name] = passed.get(s.name, 0.0) + s.throughput_rps
            # replica-seconds busy per second, at full rate: what passed over `_capacity`
            busy[s.name] = busy.get(s.name, 0.0) + s.throughput_rps / m
            replicas[s.name] = s.replicas
    return {k: passed[k] / busy[k] * replicas[k] * (pipeline.stage(k).limits(v).rate_max
                                                    if pipeline.stage(k).is_gpu else 1.0)
            for k in passed}


def _at_limit(s: StageObservation, ctx: Context, pipeline: PipelineSpec,
              v: ValidatorConfig) -> bool:
    """Whether the stage can grow no further: replicas at their limit (a GPU stage: or no
    GPU left in the cluster beside the other GPU stages' replicas) and, for a CPU stage,
    CPU at its limit. A GPU stage's rate can still rise; its ceiling is at full rate. A
    stage whose replica count can never move is left out, as from the wait budgets: SAIR
    does not size it, and such a stage is typically an ingress that awaits the others, so
    its busy share says nothing about what it can pass."""
    spec = pipeline.stage(s.name)
    lim = spec.limits(v)
    if lim.replicas_max <= lim.replicas_min:
        return False
    if s.kind != StageKind.GPU:
        return s.replicas >= lim.replicas_max and s.cpu_m >= lim.cpu_m_max
    held = sum(o.replicas * pipeline.stage(o.name).gpus_per_replica for o in ctx.stages
               if o.kind == StageKind.GPU and o.name != s.name)
    gpus = int((pipeline.cluster.gpus - held) / spec.gpus_per_replica + 1e-9)
    return s.replicas >= min(lim.replicas_max, gpus)


def _p99_full(s: StageObservation) -> float:
    """A GPU stage's p99 scaled to full rate (§8 stretches GPU time as 1 / r)."""
    if s.kind != StageKind.GPU or not math.isfinite(s.p99_ms):
        return 0.0
    return max(s.p99_ms, 0.0) * s.rate


@dataclass(frozen=True)
class Sizing:
    """The `fit` proposal, and the stages it holds because their requests measurably do
    not wait although they read busy (GPU stages at full rate, `_quiet`): a hold that is
    a judgement, which a bottleneck analysis reading utilisation must not override."""

    proposal: Proposal
    quiet: frozenset[str]


def size(ctx: Context, pipeline: PipelineSpec, v: ValidatorConfig,
         history: Sequence[Context] = ()) -> Sizing:
    """Per stage, a §6 action sizing it to its need (`hold()` where it already fits or
    nothing can be estimated)."""
    need = needs(ctx, pipeline, v, history)
    out: Proposal = {}
    quiet: set[str] = set()
    for s in ctx.stages:
        n = need.get(s.name)
        lim = pipeline.stage(s.name).limits(v)
        if n is not None and s.kind == StageKind.GPU and _quiet_at_full_rate(s, n, lim):
            quiet.add(s.name)
        out[s.name] = (hold() if n is None else
                       _one_step(_fit_gpu(s, n, lim, ctx.sla_ms), s, v)
                       if s.kind == StageKind.GPU else _one_step(_fit_cpu(s, n, lim, v), s, v))
    return Sizing(out, frozenset(quiet))


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
    if n.demand > s.replicas + 1e-9:
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
    """The fewest replicas that carry the recent peak under the scale-down rule."""
    return max(lim.replicas_min, math.ceil(n.keep - 1e-9))


def _quiet(s: StageObservation, n: StageNeed) -> bool:
    """Whether the stage's requests measurably do not wait: at most one queued and a mean
    queueing delay within `QUIET_SHARE` of its wait budget. A batching stage reads busy
    long before its requests wait (its per-request cost falls as its batches grow), so for
    a GPU stage at full rate this, not its utilisation, decides whether a whole GPU more
    is needed."""
    return s.queue <= 1.0 and s.queue_delay_ms <= QUIET_SHARE * n.wait_budget_s * 1000.0


def _gpu_short(s: StageObservation, n: StageNeed) -> bool:
    """Whether a GPU stage reads short of capacity now."""
    return s.util > U_HIGH or n.demand > s.replicas * s.rate


def _quiet_at_full_rate(s: StageObservation, n: StageNeed, lim: StageLimits) -> bool:
    """A GPU stage that reads short at full rate, but whose requests do not wait: it is
    held, not given another GPU."""
    return _gpu_short(s, n) and s.rate >= lim.rate_max - 1e-9 and _quiet(s, n)


def _fit_gpu(s: StageObservation, n: StageNeed, lim: StageLimits, sla_ms: float) -> Entry:
    # the rate below which the stage's p99 (stretched as 1/r) would crowd the SLA; from
    # the worst recent window, since one window's p99 of a heavy-tailed stage is noisy
    floor = lim.rate_min
    if sla_ms > 0:
        floor = min(lim.rate_max, max(floor, n.peak_p99_full_ms / (LAT_SHARE * sla_ms)))
    if _gpu_short(s, n):
        if s.rate < lim.rate_max - 1e-9:
            want = max(floor, min(lim.rate_max, n.demand / s.replicas))
            return set_rate(round(max(want, s.rate), 2))
        if _quiet_at_full_rate(s, n, lim):
            return hold()
        want = math.ceil(n.demand)
        if want > s.replicas and s.replicas < lim.replicas_max:
            return scale_replicas(min(lim.replicas_max, want))
        return hold()
    keep = _keep(n, lim)
    if keep < s.replicas:
        return scale_replicas(keep)
    rate = round(max(floor, min(lim.rate_max, n.keep / s.replicas)), 2)
    if rate < s.rate - 1e-9:
        return set_rate(rate)
    return hold()

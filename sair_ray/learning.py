"""Memory that corrects the rule (project extension, docs/algorithm.md §10).

The §6 candidates size every stage with fixed rules (`policy/sizing.py`: a utilisation
target from the SLA's queueing budget, capacity kept for 10 minutes after a peak), and the
§4 episodes can only change a step size. This module keeps what the outcomes of past
rounds say, per load level, and turns it into moves the rule cannot make:

- an **outcome table**: for every rewarded round whose window ran on one allocation (no
  capacity still starting, no backlog from before that it cleared), the allocation in
  force, the arrival-rate bucket `floor(log(lambda) / log(learning.bucket_base))`,
  whether the window met the SLA with a margin (`ok`: p99 <= `ok_margin` x SLA, nothing
  dropped) or missed it (`fail`: p99 > SLA or drops), and the cost rate. Per stage it
  keeps the same counts by capacity level (replicas x CPU cores, or replicas x GPU rate),
  a failure charged only to the stages the bottleneck analysis blames;
- **headroom** (`veto`): a scale-down the policy proposes is held back on a stage whose
  target level failed at this load more often than `fail_max` (a heavy-tailed stage
  keeps the capacity its outcomes demand);
- **known good** (`hold`): while the SLA is met, a scale-up is held back when the
  allocation in force has met the SLA at this load `n_min` times and failed no more than
  `fail_max` (a batching stage whose utilisation reads high but serves in time), unless
  the load is rising (what an allocation did at the bottom of a bucket says nothing about
  its top);
- **give-back**: with the SLA met and the load steady (or the next spike predicted far
  enough ahead), the cheapest allocation known good at this load, if cheaper than the
  one in force by `min_saving`, is proposed (the validator takes it there step by step);
- **directed probes** (`probe`): an exploration round tries the cheapest untried
  one-step reduction at this load (never a level known to fail, never more capacity), and
  the learner keeps it for `n_min` rounds unless a window misses the SLA (a trial);
- **foresight** (`sair_ray.foresight`): a periodic load recognised from the arrival rates
  of past rounds pre-scales to the allocation the previous spikes needed, `lead_s` before
  the next one (`learning.foresight`, off by default: no measurable gain on the shipped
  burst, docs/algorithm.md §10).

Nothing here actuates: `correct` returns a proposal in the §6 schema that the validator
still checks. The controller switches all of it off with `retrieval.K = 0` (the `no_icl`
ablation), as it does the episodes, so that ablation measures the memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sair_ray.bottleneck import BottleneckReport
from sair_ray.config import LearningConfig, ValidatorConfig
from sair_ray.foresight import Forecast, forecast
from sair_ray.proposal import Proposal, hold, scale_both, targets
from sair_ray.types import Action, Allocation, Context, PipelineSpec, StageAllocation

TREND_ROUNDS = 6     # rounds averaged for a probe's load, and compared with the 6 before
PROBE_U_MAX = 0.85   # a directed probe may not take a stage above this utilisation ...
PROBE_U_SEEN = 0.95  # ... estimated, or this one as seen at that level and load before
AllocKey = tuple[tuple[int, int, int, float], ...]


def bucket(rate: float, base: float) -> int:
    """Load level of an arrival rate (rates below 1e-3 share the bucket of 1e-3)."""
    return math.floor(math.log(max(rate, 1e-3)) / math.log(base))


def _queued(ctx: Context) -> float:
    """Requests waiting in the pipeline at the end of the window."""
    return sum(max(s.queue, 0.0) for s in ctx.stages)


def level(a: StageAllocation, gpu: bool) -> float:
    """A stage's capacity as one number: replicas x GPU rate, or replicas x CPU cores."""
    return round(a.replicas * (a.rate if gpu else a.cpu_m / 1000.0), 3)


def key(alloc: Mapping[str, StageAllocation], order: Sequence[str]) -> AllocKey:
    return tuple((alloc[s].replicas, alloc[s].cpu_m, alloc[s].mem_mb, round(alloc[s].rate, 3))
                 for s in order)


@dataclass
class Counts:
    n: int = 0
    ok: int = 0
    fail: int = 0
    cost: float = 0.0   # the latest cost rate seen for the allocation ($/h)
    util: float = 0.0   # the largest utilisation a stage showed at the level (level counts)

    @property
    def fail_rate(self) -> float:
        return self.fail / self.n if self.n else 0.0


@dataclass
class OutcomeTable:
    """Outcome counts per load bucket: per whole allocation, and per stage capacity level."""

    stages: tuple[str, ...]
    allocs: dict[int, dict[AllocKey, Counts]] = field(default_factory=dict)
    levels: dict[tuple[str, int], dict[float, Counts]] = field(default_factory=dict)

    def record(self, b: int, alloc: Mapping[str, StageAllocation], gpu: Mapping[str, bool],
               ok: bool, fail: bool, cost: float, blamed: Sequence[str],
               util: Mapping[str, float] | None = None) -> None:
        c = self.allocs.setdefault(b, {}).setdefault(key(alloc, self.stages), Counts())
        c.n += 1
        c.ok += ok
        c.fail += fail
        c.cost = cost
        for s in self.stages:
            lc = self.levels.setdefault((s, b), {}).setdefault(level(alloc[s], gpu[s]), Counts())
            lc.n += 1
            lc.ok += ok
            lc.fail += fail and s in blamed
            if util is not None:
                lc.util = max(lc.util, util.get(s, 0.0))

    def alloc_counts(self, b: int, alloc: Mapping[str, StageAllocation]) -> Counts:
        return self.allocs.get(b, {}).get(key(alloc, self.stages), Counts())

    def level_counts(self, stage: str, bs: Sequence[int], lvl: float) -> Counts:
        out = Counts()
        for b in bs:
            c = self.levels.get((stage, b), {}).get(round(lvl, 3))
            if c is not None:
                out.n += c.n
                out.ok += c.ok
                out.fail += c.fail
                out.util = max(out.util, c.util)
        return out

    def good(self, b: int, alloc: Mapping[str, StageAllocation], n_min: int,
             fail_max: float) -> bool:
        return _good(self.alloc_counts(b, alloc), n_min, fail_max)

    def cheapest_good(self, b: int, n_min: int, fail_max: float
                      ) -> tuple[AllocKey, Counts] | None:
        best: tuple[AllocKey, Counts] | None = None
        for k, c in self.allocs.get(b, {}).items():
            if _good(c, n_min, fail_max) and (best is None or c.cost < best[1].cost):
                best = (k, c)
        return best

    def __len__(self) -> int:
        return sum(c.n for per in self.allocs.values() for c in per.values())


def _busy(ctx: Context, stage: str, gpu: bool) -> float:
    """A stage's work in a window in capacity-level units (utilisation x level)."""
    try:
        o = ctx.stage(stage)
    except KeyError:
        return 0.0
    u = o.util if math.isfinite(o.util) else 0.0
    return max(u, 0.0) * level(o.allocation, gpu)


def _good(c: Counts, n_min: int, fail_max: float) -> bool:
    """Met the SLA with the margin `n_min` times, and in all but `fail_max` of its windows
    (a window near the SLA counts against it like a miss)."""
    return c.ok >= n_min and c.ok >= (1 - fail_max) * c.n


def from_key(k: AllocKey, order: Sequence[str]) -> Allocation:
    return {s: StageAllocation(r, cpu, mem, rate) for s, (r, cpu, mem, rate) in zip(
        order, k, strict=True)}


def to_proposal(pipeline: PipelineSpec, current: Mapping[str, StageAllocation],
                target: Mapping[str, StageAllocation]) -> Proposal:
    """Absolute §6 targets taking each stage from `current` to `target`."""
    out: Proposal = {}
    for spec in pipeline.stages:
        cur, tgt = current[spec.name], target[spec.name]
        if cur == tgt:
            out[spec.name] = hold()
        elif spec.is_gpu:
            out[spec.name] = targets(replicas=tgt.replicas, rate=tgt.rate)
        else:
            out[spec.name] = scale_both(tgt.replicas, tgt.cpu_m, tgt.mem_mb)
    return out


def _more(a: StageAllocation, b: StageAllocation, gpu: bool) -> bool:
    return level(a, gpu) > level(b, gpu) + 1e-9


def stage_max(a: Mapping[str, StageAllocation], b: Mapping[str, StageAllocation],
              gpus: Mapping[str, bool]) -> Allocation:
    """Per stage, whichever of the two has more capacity."""
    return {s: (b[s] if _more(b[s], a[s], gpus[s]) else a[s]) for s in a}


@dataclass(frozen=True)
class Hints:
    """What the learner knows this round, for the policy's prompt and the decision log."""

    lines: tuple[str, ...] = ()
    candidates: tuple[tuple[str, Proposal, str], ...] = ()   # (label, proposal, note)


@dataclass
class _Trial:
    alloc: AllocKey
    rounds_left: int


Resolve = Callable[[Any], Allocation]   # a proposal -> the targets the validator would set


class Learner:
    """The outcome table, the arrival series and the corrections built on them."""

    def __init__(self, pipeline: PipelineSpec, cfg: LearningConfig, v: ValidatorConfig,
                 interval_s: float, cost: Callable[[Mapping[str, StageAllocation]], float]
                 ) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.v = v
        self.interval_s = interval_s
        self.cost = cost
        self.order = pipeline.stage_names
        self.gpu = {s.name: s.is_gpu for s in pipeline.stages}
        self.table = OutcomeTable(self.order)
        self.series: list[tuple[float, float, AllocKey]] = []   # (time, arrival rate, alloc)
        self.trial: _Trial | None = None
        self.forecast: Forecast | None = None
        self.counts = {"veto": 0, "hold": 0, "giveback": 0, "prescale": 0, "probe": 0}

    # -- learning --------------------------------------------------------------------
    def observe(self, prev: Context | None, action: Action | None, ctx: Context,
                report: BottleneckReport | None) -> None:
        """Record the window that just ended (`ctx`), which ran on the allocation the
        previous round's `action` set from `prev`."""
        self.series.append((ctx.time, ctx.arrival_rate, key(ctx.allocation, self.order)))
        keep = self.cfg.history_rounds
        if len(self.series) > keep:
            del self.series[:len(self.series) - keep]
        self.forecast = forecast([t for t, _, _ in self.series], [r for _, r, _ in self.series],
                                 self.cfg) if self.cfg.foresight else None
        ok, fail = self._verdict(ctx)
        blamed = list(report.stages) if report is not None and report.stages else []
        if fail and not blamed and report is not None and report.symptoms:
            blamed = [max(report.symptoms, key=lambda s: s.latency_share).stage]
        b = bucket(ctx.arrival_rate, self.cfg.bucket_base)
        if prev is not None and action is not None and any(
                d.replicas > 0 or d.rate > 0 or d.cpu_m > 0 for d in action.deltas.values()):
            # capacity still starting: the window ran on about the allocation before, so
            # only a miss is recorded, against that one
            if fail:
                self.table.record(b, prev.allocation, self.gpu, False, True,
                                  self.cost(prev.allocation), blamed)
            return
        if fail and prev is not None and _queued(prev) >= 1 and _queued(ctx) < 1 \
                and not ctx.drops and not ctx.errors:
            # a backlog from before, cleared in this window: its requests waited under the
            # capacity that built it, so the miss is not this allocation's (charged to it,
            # the level that drained a start-up backlog was vetoed for good: a one-GPU-stage
            # pipeline at 0.3 utilisation kept 4 GPUs, 1.6x HPA's cost)
            return
        util = {s.name: s.util for s in ctx.stages if math.isfinite(s.util)}
        self.table.record(b, ctx.allocation, self.gpu, ok, fail, ctx.cost_rate, blamed, util)

    def _verdict(self, ctx: Context) -> tuple[bool, bool]:
        p99 = ctx.p99_ms if math.isfinite(ctx.p99_ms) else math.inf
        fail = p99 > ctx.sla_ms or ctx.drops > 0 or ctx.errors > 0
        ok = not fail and p99 <= self.cfg.ok_margin * ctx.sla_ms
        return ok, fail

    # -- exploration -------------------------------------------------------------------
    def probe(self, ctx: Context, resolve: Resolve,
              history: Sequence[Context] = ()) -> Proposal | None:
        """The cheapest untried one-step reduction at this load, or None (no probe: the
        memory is not uncertain about anything cheaper, or the SLA is not met)."""
        ok, _ = self._verdict(ctx)
        slack = ctx.p99_ms / ctx.sla_ms if ctx.sla_ms > 0 else math.inf
        if not ok or slack > self.cfg.probe_slack or self._spike_soon(ctx):
            return None
        rates = [r for _, r, _ in self.series]
        ordered = sorted(rates)
        if ordered and ctx.arrival_rate > 1.25 * ordered[len(ordered) // 2]:
            return None   # a peak is where a wrong step costs most: probe at ordinary load
        # the load of the last minutes, not of one window (a low-rate load is noisy), and
        # not while it rises
        if self._rising():
            return None
        now_mean = float(np.mean(rates[-TREND_ROUNDS:])) if rates else ctx.arrival_rate
        recent = [h for h in history if h.time >= ctx.time - self.cfg.steady_s] + [ctx]
        b = bucket(max(now_mean, ctx.arrival_rate), self.cfg.bucket_base)
        cur = ctx.allocation
        now_cost = self.cost(cur)
        best: tuple[float, Allocation] | None = None
        for spec in self.pipeline.stages:
            # the most work the stage did in the recent past (busy replicas, at full rate
            # on a GPU stage): a quiet window of a noisy load says little about the next
            busy = max(_busy(h, spec.name, self.gpu[spec.name]) for h in recent)
            for smaller in self._reductions(spec.name, cur[spec.name]):
                lv = level(smaller, self.gpu[spec.name])
                if lv <= 0:
                    continue
                seen = self.table.level_counts(spec.name, (b,), lv)
                if seen.n and not seen.fail:
                    # the stage ran at this level and load before: what it showed then is
                    # evidence, the linear estimate is not (a batching stage's utilisation
                    # does not scale with its capacity)
                    if seen.util > PROBE_U_SEEN:
                        continue
                elif busy / lv > PROBE_U_MAX:
                    continue
                alloc = dict(cur)
                alloc[spec.name] = smaller
                target = resolve(to_proposal(self.pipeline, cur, alloc))
                if target == cur or self._bad(spec.name, b, target[spec.name]):
                    continue
                if self.table.alloc_counts(b, target).n >= self.cfg.n_min:
                    continue   # known already: nothing to learn there
                saving = now_cost - self.cost(target)
                if saving > self.cfg.min_saving * now_cost and (best is None or saving > best[0]):
                    best = (saving, target)
        if best is None:
            return None
        self.trial = _Trial(key(best[1], self.order), self.cfg.n_min)
        self.counts["probe"] += 1
        return to_proposal(self.pipeline, cur, best[1])

    def _reductions(self, stage: str, a: StageAllocation) -> list[StageAllocation]:
        v = self.v
        out = []
        if a.replicas > 1:
            out.append(StageAllocation(a.replicas - 1, a.cpu_m, a.mem_mb, a.rate))
        if self.gpu[stage]:
            out.append(StageAllocation(a.replicas, a.cpu_m, a.mem_mb,
                                       round(max(v.rate_min, a.rate - v.max_rate_step / 2), 3)))
        else:
            out.append(StageAllocation(a.replicas, int(a.cpu_m - v.max_cpu_step_m / 2),
                                       a.mem_mb, a.rate))
        return out

    # -- correcting the policy ---------------------------------------------------------
    def correct(self, ctx: Context, proposal: Any, resolve: Resolve,
                history: Sequence[Context]) -> tuple[Any, str]:
        """The policy's proposal, corrected by what the memory knows; and a note saying
        what changed ('' if nothing)."""
        cfg = self.cfg
        cur = ctx.allocation
        b = bucket(ctx.arrival_rate, cfg.bucket_base)
        tgt = resolve(proposal)
        ok, fail = self._verdict(ctx)
        notes: list[str] = []

        pre = self._prescale(ctx) if cfg.foresight else None
        if pre is not None:
            merged = stage_max(tgt, pre, self.gpu)
            if merged != tgt:
                self.counts["prescale"] += 1
                return to_proposal(self.pipeline, cur, merged), "foresight: pre-scale for the " \
                    "predicted spike"
        trial = self.trial
        if trial is not None:
            if key(cur, self.order) != trial.alloc or fail or trial.rounds_left <= 0:
                self.trial = trial = None
            else:
                trial.rounds_left -= 1
        adds = [s for s in self.order if _more(tgt[s], cur[s], self.gpu[s])]
        # what the allocation did at this load bucket says nothing about the top of a
        # rising load inside the same bucket: then the sizing's scale-up goes through
        if adds and ok and (trial is not None or (
                not self._rising() and self.table.good(b, cur, cfg.n_min, cfg.fail_max))):
            for s in adds:
                tgt[s] = cur[s]
            self.counts["hold"] += 1
            notes.append("known good at this load: hold " + ", ".join(adds))
        if cfg.headroom:
            vetoed = [s for s in self.order if _more(cur[s], tgt[s], self.gpu[s])
                      and self._bad(s, b, tgt[s])]
            for s in vetoed:
                tgt[s] = cur[s]
            if vetoed:
                self.counts["veto"] += 1
                notes.append("failed at this load before: keep " + ", ".join(vetoed))
        if cfg.giveback and ok and not adds and self._steady(ctx, history):
            g = self.table.cheapest_good(b, cfg.n_min, cfg.fail_max)
            if g is not None:
                alloc = from_key(g[0], self.order)
                if g[1].cost < min(self.cost(tgt), self.cost(cur)) * (1 - cfg.min_saving) \
                        and not any(self._bad(s, b, alloc[s]) for s in self.order):
                    self.counts["giveback"] += 1
                    return (to_proposal(self.pipeline, cur, alloc),
                            f"give-back: met the SLA {g[1].ok}x at this load for "
                            f"${g[1].cost:.2f}/h")
        if not notes:
            return proposal, ""
        return to_proposal(self.pipeline, cur, tgt), "; ".join(notes)

    def _bad(self, stage: str, b: int, a: StageAllocation) -> bool:
        """Whether the stage at `a`'s capacity level is known to fail at load bucket `b`:
        it, or a level at least as large, missed the SLA at this load or a neighbouring one
        (a window's arrival rate is noisy) more often than `fail_max` (less capacity than
        a failing level fails too)."""
        lv = level(a, self.gpu[stage])
        for bb in (b - 1, b, b + 1):
            for lvl, c in self.table.levels.get((stage, bb), {}).items():
                if lvl >= lv - 1e-9 and c.fail >= 1 and c.fail_rate > self.cfg.fail_max:
                    return True
        return False

    def _rising(self) -> bool:
        """Whether the load is rising: the mean arrival rate of the last `TREND_ROUNDS`
        rounds more than 10 % above that of the rounds before."""
        rates = [r for _, r, _ in self.series]
        if len(rates) < 2 * TREND_ROUNDS:
            return False
        return float(np.mean(rates[-TREND_ROUNDS:])) > 1.1 * float(
            np.mean(rates[-2 * TREND_ROUNDS:-TREND_ROUNDS]))

    def _steady(self, ctx: Context, history: Sequence[Context]) -> bool:
        """Whether capacity may be given back: no higher load bucket in the sizing's
        scale-down window, unless foresight says the next spike is far enough off."""
        f = self.forecast
        if f is not None and f.confident(self.cfg):
            return not self._spike_soon(ctx, extra_s=self.v.cooldown_down_s)
        b = bucket(ctx.arrival_rate, self.cfg.bucket_base)
        recent = [h for h in history if h.time >= ctx.time - self.cfg.steady_s]
        return all(bucket(h.arrival_rate, self.cfg.bucket_base) <= b for h in recent)

    def _spike_soon(self, ctx: Context, extra_s: float = 0.0) -> bool:
        f = self.forecast
        if f is None or not f.confident(self.cfg):
            return False
        return f.peak_within(ctx.time, self.cfg.lead_s + extra_s) > max(
            ctx.arrival_rate, 1e-9) * self.cfg.spike_ratio

    def _prescale(self, ctx: Context) -> Allocation | None:
        """The allocation the previous spikes needed, while the next is predicted within
        `lead_s` (or on now): the cheapest known good at the spike's load, else the most
        capacity each stage had in the spike phases of the last period."""
        f = self.forecast
        if f is None or not f.confident(self.cfg):
            return None
        peak = f.peak_within(ctx.time, self.cfg.lead_s)
        if peak <= max(ctx.arrival_rate, 1e-9) * self.cfg.spike_ratio and not f.in_spike(ctx.time):
            return None
        if f.in_spike(ctx.time):
            peak = max(peak, f.amplitude)
        b = bucket(peak, self.cfg.bucket_base)
        g = self.table.cheapest_good(b, 1, self.cfg.fail_max)
        if g is not None:
            return from_key(g[0], self.order)
        # the last spike's allocations: earlier ones include the first reactions to the
        # pattern, before anything was learned
        spiky = [k for t, _, k in self.series
                 if t >= ctx.time - f.period_s and f.in_spike(t)]
        if not spiky:
            return None
        out = from_key(spiky[0], self.order)
        for k in spiky[1:]:
            out = stage_max(out, from_key(k, self.order), self.gpu)
        return out

    # -- what the policy sees ------------------------------------------------------------
    def hints(self, ctx: Context) -> Hints:
        b = bucket(ctx.arrival_rate, self.cfg.bucket_base)
        lines = []
        c = self.table.alloc_counts(b, ctx.allocation)
        if c.n:
            lines.append(f"Memory at this load ({ctx.arrival_rate:.3g} req/s): the current "
                         f"allocation met the SLA {c.ok}/{c.n} times, missed it {c.fail}.")
        g = self.table.cheapest_good(b, self.cfg.n_min, self.cfg.fail_max)
        cands: list[tuple[str, Proposal, str]] = []
        if g is not None:
            alloc = from_key(g[0], self.order)
            desc = ", ".join(f"{s} r={a.replicas}" + (f" rate={a.rate:.2f}" if self.gpu[s]
                                                        else f" cpu={a.cpu_m}m")
                             for s, a in alloc.items())
            lines.append(f"Cheapest allocation that met the SLA at this load ({g[1].ok} "
                         f"times): {desc}, ${g[1].cost:.2f}/h.")
            if alloc != ctx.allocation:
                cands.append(("memory", to_proposal(self.pipeline, ctx.allocation, alloc),
                              f"met the SLA {g[1].ok}x at this load"))
        bad = [s for s in self.order if self._bad(s, b, ctx.allocation[s])]
        if bad:
            lines.append("Missed the SLA at this load with the current capacity of: "
                         + ", ".join(bad) + ".")
        f = self.forecast
        if f is not None and f.confident(self.cfg):
            nxt = f.next_spike(ctx.time)
            lines.append(f"Periodic load (confidence {f.confidence:.2f}): spikes to "
                         f"~{f.amplitude:.3g} req/s every {f.period_s:.0f} s; next in "
                         f"{max(0.0, nxt - ctx.time):.0f} s.")
            pre = self._prescale(ctx)
            if pre is not None and pre != ctx.allocation:
                cands.append(("pre-scale", to_proposal(self.pipeline, ctx.allocation,
                                                       stage_max(ctx.allocation, pre, self.gpu)),
                              "capacity for the predicted spike"))
        return Hints(tuple(lines), tuple(cands))

    def state(self) -> dict[str, Any]:
        return {"outcomes": len(self.table), "forecast": (
            None if self.forecast is None else self.forecast.to_dict()), **self.counts}

"""Oracle: a clairvoyant planner, the cheapest allocation that meets the SLA by queueing analysis.

It knows the workload (so the arrival rate of the coming interval) and the profile (so
each stage's service-time distribution), which no real autoscaler does; it is the
reference the others are measured against, not a deployable policy.

Model, per stage k with c replicas, at arrival rate lambda:
- mean service time s = E[ref] * factor(allocation) (sim/model.py), with the fluid
  batch size of a batching stage folded in;
- M/M/c (Erlang C) waiting time; its q-quantile w_q = ln(C / (1 - q)) / (c mu - lambda),
  scaled by (1 + scv) / 2 for the service time's squared coefficient of variation (the
  Allen-Cunneen approximation of M/G/c; off with `service_variability=False`, which leaves
  plain M/M/c); heavy-tailed text generation needs it;
- stage latency l_k = (q-quantile of the service time) + w_q, and utilisation at most
  `rho_max` (queueing formulas are fragile near saturation);
- end-to-end: sum_k l_k <= SLA * headroom (the sum of per-stage quantiles bounds the
  quantile of the sum for the positively correlated stage delays of a tandem line, so this
  is conservative).
Cost: the docs/algorithm.md §9 cost rate (effective by default). The search enumerates
per-stage options (replicas x CPU grid for CPU stages with the smallest memory that fits
the working set; replicas x rate grid for GPU stages), keeps each stage's cost/latency
Pareto front, merges the fronts stage by stage, and takes the cheapest combination that
meets the budget and fits the cluster (exact: when the cluster's CPU or memory binds, the
fronts also keep options that save CPU or memory). To avoid needless rolling restarts it
keeps the current CPU/memory sizes when that is at most `resize_tolerance` dearer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sair_ray.config import CostConfig, ValidatorConfig
from sair_ray.cost import CostModel
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.profiles import Profile
from sair_ray.proposal import Proposal, scale_both, targets
from sair_ray.sim.model import StageModel, batch_size_at
from sair_ray.sim.queueing import mmc_wait_quantile
from sair_ray.types import Allocation, StageAllocation, StageKind, StageSpec
from sair_ray.workloads import Workload


@dataclass(frozen=True)
class Option:
    """One way to run one stage (or, once merged, a whole pipeline)."""

    cost: float                 # $/h
    latency_s: float            # modelled q-quantile contribution
    cpus: float
    mem_mb: float
    gpus: float
    allocs: tuple[StageAllocation, ...]


@dataclass(frozen=True)
class Plan:
    allocation: Allocation
    cost: float
    latency_s: float
    feasible: bool              # False: nothing met the SLA; this is the fastest option
    rate: float                 # the arrival rate planned for


class Oracle:
    name = "oracle"

    def __init__(self, profile: Profile, workload: Workload, *, lookahead_s: float = 60.0,
                 rate_estimate: str = "peak", quantile: float = 0.99, headroom: float = 1.0,
                 rho_max: float = 0.9, cpu_step_m: int = 250, rate_step: float = 0.05,
                 cost_model: str = "effective", resize_tolerance: float = 0.1,
                 prices: CostConfig | None = None, validator: ValidatorConfig | None = None,
                 service_variability: bool = True, n_samples: int = 20000,
                 seed: int = 0) -> None:
        if rate_estimate not in ("peak", "mean"):
            raise ValueError("rate_estimate must be 'peak' or 'mean'")
        if cost_model not in ("effective", "billable"):
            raise ValueError("cost_model must be 'effective' or 'billable'")
        if not 0 < quantile < 1 or not 0 < rho_max < 1:
            raise ValueError("quantile and rho_max must be in (0, 1)")
        self.profile, self.workload = profile, workload
        self.pipeline = profile.pipeline
        self.lookahead_s, self.rate_estimate = lookahead_s, rate_estimate
        self.quantile, self.headroom, self.rho_max = quantile, headroom, rho_max
        self.cpu_step_m, self.rate_step = cpu_step_m, rate_step
        self.effective = cost_model == "effective"
        self.resize_tolerance = resize_tolerance
        self.costs = CostModel(self.pipeline, prices or CostConfig())
        self.validator = validator or ValidatorConfig()
        self._cache: tuple[tuple[object, ...], Plan] | None = None  # the last plan
        # Reference service-time statistics, sampled once with the workload's work sizes.
        rng = np.random.default_rng(seed)
        attrs = workload.sample_attrs(rng, n_samples)
        self._ref_mean: dict[str, float] = {}
        self._ref_q: dict[str, float] = {}
        self._wait_scale: dict[str, float] = {}
        for spec, model in zip(self.pipeline.stages, profile.models, strict=True):
            refs = model.draw_refs(rng, n_samples, attrs)
            self._ref_mean[spec.name] = float(refs.mean())
            self._ref_q[spec.name] = float(np.quantile(refs, quantile))
            scv = float(refs.var() / refs.mean() ** 2) if refs.mean() > 0 else 0.0
            self._wait_scale[spec.name] = (1 + scv) / 2 if service_variability else 1.0

    # -- the queueing model ----------------------------------------------------------------
    def stage_latency(self, spec: StageSpec, model: StageModel, a: StageAllocation,
                      lam: float) -> float:
        """Modelled q-quantile of the time a request spends at the stage (inf: infeasible)."""
        if a.replicas < 1:
            return math.inf
        if model.memory_effect(a.mem_mb)[1]:
            return math.inf  # OOM-killed
        f = model.factor(spec.kind, a.cpu_m, a.mem_mb, a.rate)
        m = self._ref_mean[spec.name] * f
        o = model.batch_overhead_s * f
        lam_r = lam / a.replicas
        b = batch_size_at(lam_r, o, m, model.batch_max) if model.batch_max > 1 else 1.0
        s = (o + b * m) / b
        if lam * s / a.replicas > self.rho_max:
            return math.inf
        service_q = o + b * m + (self._ref_q[spec.name] * f - m)
        wait_q = mmc_wait_quantile(lam, 1.0 / s, a.replicas, self.quantile)
        return service_q + wait_q * self._wait_scale[spec.name]

    def stage_options(self, spec: StageSpec, model: StageModel, current: StageAllocation,
                      lam: float, *, resize: bool = True) -> list[Option]:
        lim = spec.limits(self.validator)
        gpus_each = spec.gpus_per_replica if spec.is_gpu else 0.0
        if spec.is_gpu:
            rates = np.round(np.arange(lim.rate_max, lim.rate_min - 1e-9, -self.rate_step), 6)
            shapes = [(current.cpu_m, current.mem_mb, float(r)) for r in rates]
        elif resize:
            mem = _fit_memory(model, lim.mem_mb_min, lim.mem_mb_max)
            step = self.cpu_step_m
            grid = range(math.ceil(lim.cpu_m_min / step) * step, lim.cpu_m_max + 1, step)
            shapes = [(c, mem, 1.0) for c in sorted({lim.cpu_m_min, *grid})]
        else:
            shapes = [(current.cpu_m, current.mem_mb, 1.0)]
        cluster = self.pipeline.cluster
        out = []
        for n in range(max(1, lim.replicas_min), lim.replicas_max + 1):
            if n * gpus_each > cluster.gpus + 1e-9:
                break
            for cpu_m, mem_mb, rate in shapes:
                if n * cpu_m > cluster.cpus * 1000 or n * mem_mb > cluster.memory_mb:
                    continue  # cannot fit even alone
                a = StageAllocation(n, int(cpu_m), int(mem_mb), rate)
                lat = self.stage_latency(spec, model, a, lam)
                if not math.isfinite(lat):
                    continue
                cost = n * self.costs.replica_rate(spec.name, a, effective=self.effective)
                out.append(Option(cost, lat, n * cpu_m / 1000, n * mem_mb, n * gpus_each, (a,)))
        return out

    def plan(self, lam: float, current: Mapping[str, StageAllocation] | None = None) -> Plan:
        current = current or self.pipeline.initial_allocation()
        key = (lam, tuple(sorted(current.items())))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        plan = self._plan(lam, current)
        self._cache = (key, plan)
        return plan

    def _plan(self, lam: float, current: Mapping[str, StageAllocation]) -> Plan:
        full = self._search(lam, current, resize=True)
        if self.resize_tolerance >= 0:
            keep = self._search(lam, current, resize=False)
            if keep is not None and full is not None and keep.feasible and (
                    keep.cost <= full.cost * (1 + self.resize_tolerance)):
                return keep
        if full is None:  # nothing even stable: give every stage its largest allocation
            alloc = {s.name: _largest(s, self.validator, current[s.name],
                                      self.pipeline.cluster.gpus)
                     for s in self.pipeline.stages}
            return Plan(alloc, self.costs.rate(alloc, effective=self.effective), math.inf,
                        False, lam)
        return full

    def _search(self, lam: float, current: Mapping[str, StageAllocation],
                resize: bool) -> Plan | None:
        options = []
        for spec, model in zip(self.pipeline.stages, self.profile.models, strict=True):
            opts = self.stage_options(spec, model, current[spec.name], lam, resize=resize)
            if not opts:
                return None
            options.append(opts)
        # Fast path: fronts in (cost, latency) per GPU count. The cheapest combination on
        # them is optimal unless it breaks the cluster's CPU or memory; only then merge
        # again keeping everything not dominated in CPU and memory too (slower, exact).
        # A partial combination that, with the least the stages still to come need, cannot
        # fit the cluster is dropped as it is made: no later stage can make it fit, and
        # without this the exact fronts of a five-stage pipeline grow to 10^5 options.
        rest = _least_after(options)
        for exact in (False, True):
            merged = pareto_front(options[0], exact)
            for i, opts in enumerate(options[1:], start=1):
                front = pareto_front(opts, exact)
                merged = pareto_front([c for a in merged for b in front
                                       if self._fits(c := _combine(a, b), not exact, rest[i])],
                                      exact)
            best, ok = self._pick(merged, ignore_cpu_mem=not exact)
            if best is None:
                return None
            if exact or self._fits(best):
                alloc = dict(zip(self.pipeline.stage_names, best.allocs, strict=True))
                return Plan(alloc, best.cost, best.latency_s, ok, lam)
        return None  # pragma: no cover - the exact pass always returns

    def _fits(self, o: Option, ignore_cpu_mem: bool = False,
              more: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> bool:
        """Whether `o`, with `more` (CPUs, memory, GPUs) on top, fits the cluster."""
        c = self.pipeline.cluster
        cpus, mem_mb, gpus = more
        if o.gpus + gpus > c.gpus + 1e-9:
            return False
        return ignore_cpu_mem or (o.cpus + cpus <= c.cpus + 1e-9
                                  and o.mem_mb + mem_mb <= c.memory_mb + 1e-9)

    def _pick(self, merged: Sequence[Option], ignore_cpu_mem: bool) -> tuple[Option | None,
                                                                             bool]:
        """The cheapest option meeting the budget, else the fastest; (None, False) if
        nothing fits the cluster."""
        budget = self.pipeline.sla_ms / 1000.0 * self.headroom
        fitting = [o for o in merged if self._fits(o, ignore_cpu_mem)]
        if not fitting:
            return None, False
        ok = [o for o in fitting if o.latency_s <= budget]
        if ok:
            return min(ok, key=lambda o: (o.cost, o.latency_s)), True
        return min(fitting, key=lambda o: (o.latency_s, o.cost)), False

    # -- Policy ---------------------------------------------------------------------------------
    def arrival_rate(self, now: float) -> float:
        t1 = now + self.lookahead_s
        if self.rate_estimate == "peak":
            return self.workload.peak_rate(now, t1)
        return self.workload.mean_rate(now, t1)

    def decide(self, request: PolicyRequest) -> PolicyReply:
        lam = self.arrival_rate(request.now)
        plan = self.plan(lam, request.context.allocation)
        proposal: Proposal = {}
        for spec in self.pipeline.stages:
            a = plan.allocation[spec.name]
            if spec.kind is StageKind.GPU:
                # no §6 verb covers replicas and rate together; without a verb the
                # validator takes every field present
                proposal[spec.name] = targets(replicas=a.replicas, rate=a.rate)
            else:
                proposal[spec.name] = scale_both(a.replicas, a.cpu_m, a.mem_mb)
        why = (f"oracle: lambda={lam:.2f}/s over the next {self.lookahead_s:.0f} s; modelled "
               f"p{self.quantile * 100:g} {plan.latency_s * 1000:.0f} ms at ${plan.cost:.3f}/h"
               + ("" if plan.feasible else " (no allocation meets the SLA: fastest one)"))
        return PolicyReply(proposal=proposal, rationale=why)


def pareto_front(options: Sequence[Option], exact: bool = False) -> list[Option]:
    """Options not dominated in (cost, latency), kept separately for each GPU count so
    that a cheap plan needing GPUs the cluster lacks does not hide a feasible one. With
    `exact`, also keep options that use less CPU or memory than every option beating them
    (needed when the cluster's CPU or memory binds)."""
    by_gpus: dict[float, list[Option]] = {}
    for o in options:
        by_gpus.setdefault(round(o.gpus, 6), []).append(o)
    out: list[Option] = []
    for group in by_gpus.values():
        group.sort(key=lambda o: (o.cost, o.latency_s, o.cpus, o.mem_mb))
        if not exact:
            best_lat = math.inf
            for o in group:
                if o.latency_s < best_lat:
                    out.append(o)
                    best_lat = o.latency_s
            continue
        # (latency, CPUs, memory) of the options kept so far, as arrays: one vector test
        # per option instead of a Python loop over everything kept
        kept = np.empty((len(group), 3))
        n = 0
        for o in group:
            if n and np.any((kept[:n, 0] <= o.latency_s) & (kept[:n, 1] <= o.cpus)
                            & (kept[:n, 2] <= o.mem_mb)):
                continue
            kept[n] = (o.latency_s, o.cpus, o.mem_mb)
            n += 1
            out.append(o)
    return out


def _least_after(options: Sequence[Sequence[Option]]) -> list[tuple[float, float, float]]:
    """Per stage index i, the least CPUs, memory and GPUs the stages after i need
    together (each stage's smallest of each, not necessarily from one option)."""
    out = [(0.0, 0.0, 0.0)] * len(options)
    cpus = mem_mb = gpus = 0.0
    for i in range(len(options) - 1, -1, -1):
        out[i] = (cpus, mem_mb, gpus)
        cpus += min(o.cpus for o in options[i])
        mem_mb += min(o.mem_mb for o in options[i])
        gpus += min(o.gpus for o in options[i])
    return out


def _combine(a: Option, b: Option) -> Option:
    return Option(a.cost + b.cost, a.latency_s + b.latency_s, a.cpus + b.cpus,
                  a.mem_mb + b.mem_mb, a.gpus + b.gpus, a.allocs + b.allocs)


def _fit_memory(model: StageModel, lo: int, hi: int) -> int:
    """The smallest memory (64 MB granularity) that holds the working set, in [lo, hi]."""
    need = math.ceil(model.mem_need_mb / 64) * 64 if model.mem_need_mb > 0 else lo
    return min(hi, max(lo, need))


def _largest(spec: StageSpec, v: ValidatorConfig, cur: StageAllocation,
             cluster_gpus: float) -> StageAllocation:
    lim = spec.limits(v)
    if spec.is_gpu:
        n = max(lim.replicas_min, min(lim.replicas_max,
                                      int(cluster_gpus // spec.gpus_per_replica)))
        return StageAllocation(n, cur.cpu_m, cur.mem_mb, lim.rate_max)
    return StageAllocation(lim.replicas_max, lim.cpu_m_max, max(cur.mem_mb, lim.mem_mb_min))

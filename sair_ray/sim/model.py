"""How one simulated stage behaves: service time, speed-up with CPU, GPU rate, memory.

A request's *reference* service time at a stage is drawn once, when it arrives at the
pipeline (common random numbers: every policy sees the same requests), as

    ref = service ~ Dist(mean_ms)  +  sum over work terms of per_unit_ms * units

measured on one replica at the reference allocation (`ref_cpu_m` millicores, GPU rate 1,
enough memory). The time it actually takes is `ref * factor(allocation)`:

- CPU stages: Amdahl's law with parallel fraction p. With n = cpu_m / 1000 cores,
  S(n) = n for n <= 1 (a CFS quota below one core throttles the single thread), and
  S(n) = 1 / ((1 - p) + p / n) above one core; factor = S(n_ref) / S(n).
- GPU stages: the token bucket (docs/algorithm.md §8) caps kernel throughput at r of the
  device, so the throttled share g (`gpu_fraction`, default 1) of the time stretches by 1/r:
  factor = g / r + (1 - g).
- Memory: with m = mem_mb / need_mb, m >= 1 is unaffected; oom_ratio <= m < 1 slows the
  replica linearly up to `max_slowdown` at m = oom_ratio (paging, allocator and GC
  pressure); m < oom_ratio means the working set does not fit and the replica is
  OOM-killed at the end of every request it starts (the request fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sair_ray.sim.distributions import Dist
from sair_ray.types import StageKind


@dataclass(frozen=True)
class WorkTerm:
    """A per-request work size (e.g. generated tokens) that adds `per_unit_ms` per unit.

    The size comes from the request's attribute `attr` when the workload carries it (trace
    replay), otherwise it is drawn from `units`.
    """

    attr: str
    per_unit_ms: float
    units: Dist


@dataclass(frozen=True)
class StageModel:
    service: Dist                      # ms per request, at the reference allocation
    work: tuple[WorkTerm, ...] = ()
    ref_cpu_m: int = 1000
    parallel_fraction: float = 0.0     # Amdahl p (CPU stages)
    gpu_fraction: float = 1.0          # share of service time throttled by the GPU rate
    batch_max: int = 1                 # greedy dynamic batching (1 = none)
    batch_overhead_ms: float = 0.0     # fixed cost of one batch, on top of per-request refs
    cold_start_s: float = 10.0
    mem_need_mb: float = 0.0           # per-replica working set (0 = never memory bound)
    oom_ratio: float = 0.75
    mem_max_slowdown: float = 2.0

    @property
    def batch_overhead_s(self) -> float:
        return self.batch_overhead_ms * 1e-3

    # -- speed ------------------------------------------------------------------------
    def cpu_speedup(self, cpu_m: float) -> float:
        return amdahl(cpu_m / 1000.0, self.parallel_fraction)

    def memory_effect(self, mem_mb: float) -> tuple[float, bool]:
        """(slowdown multiplier, OOM-killed) for a replica with `mem_mb`."""
        if self.mem_need_mb <= 0 or mem_mb >= self.mem_need_mb:
            return 1.0, False
        m = mem_mb / self.mem_need_mb
        if m < self.oom_ratio:
            return self.mem_max_slowdown, True
        return 1.0 + (self.mem_max_slowdown - 1.0) * (1.0 - m) / (1.0 - self.oom_ratio), False

    def factor(self, kind: StageKind, cpu_m: float, mem_mb: float, rate: float) -> float:
        """Multiplier turning a reference service time into the time this replica takes."""
        slow, _ = self.memory_effect(mem_mb)
        if kind is StageKind.GPU:
            g = self.gpu_fraction
            return slow * (g / rate + (1.0 - g))
        return slow * self.cpu_speedup(self.ref_cpu_m) / self.cpu_speedup(cpu_m)

    def active_share(self, kind: StageKind, cpu_m: float, rate: float) -> float:
        """Utilisation of a *busy* replica in the units of docs/algorithm.md §2.

        CPU: cores in use per allocated core, S(n)/n (an idle core of a replica that cannot
        use it shows as headroom). GPU: active/wall normalised by the quota, which for a
        busy replica is g / (g + r (1 - g)); 1 when the whole service is throttled.
        """
        if kind is StageKind.GPU:
            g = self.gpu_fraction
            return g / (g + rate * (1.0 - g))
        n = cpu_m / 1000.0
        return self.cpu_speedup(cpu_m) / n

    # -- reference times ----------------------------------------------------------------
    def draw_refs(self, rng: np.random.Generator, n: int,
                  attrs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Reference service times in seconds for n requests (batch overhead excluded)."""
        ref = self.service.sample(rng, n)
        for term in self.work:
            units = attrs.get(term.attr) if attrs else None
            if units is None or len(units) != n:
                units = term.units.sample(rng, n)
            ref = ref + term.per_unit_ms * np.asarray(units, dtype=float)
        return ref * 1e-3

    def mean_ref_s(self, attr_means: Mapping[str, float] | None = None) -> float:
        """Mean reference time in seconds (work means from `attr_means` when given)."""
        total = self.service.capped_mean()
        for term in self.work:
            mean_units = (attr_means or {}).get(term.attr, term.units.capped_mean())
            total += term.per_unit_ms * mean_units
        return total * 1e-3


def amdahl(cores: float, p: float) -> float:
    if cores <= 0:
        return 0.0
    if cores <= 1.0:
        return cores
    return 1.0 / ((1.0 - p) + p / cores)


def batch_size_at(lam_per_replica: float, overhead_s: float, item_s: float,
                  batch_max: int) -> float:
    """Steady-state batch size of a greedy batching server (fluid approximation).

    While the server is always busy, a batch of b items takes T(b) = o + b*m and the next
    batch holds the arrivals during it, b = lam * T(b), so b = lam*o / (1 - lam*m). Below
    saturation of the first item (lam * (o + m) < 1) batches are mostly singletons.
    """
    if lam_per_replica <= 0 or overhead_s <= 0:
        return 1.0
    if lam_per_replica * (overhead_s + item_s) < 1.0:
        return 1.0
    denom = 1.0 - lam_per_replica * item_s
    if denom <= 0:
        return float(batch_max)
    return float(min(batch_max, max(1.0, lam_per_replica * overhead_s / denom)))

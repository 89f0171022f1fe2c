"""VPA: the Kubernetes Vertical Pod Autoscaler's recommender and updater, per CPU stage.

Recommender (autoscaler/vertical-pod-autoscaler/pkg/recommender/logic):
- usage samples go into histograms with exponential buckets (first bucket 0.01 cores or
  10 MB, ratio 1.05) whose weights decay with a half-life (24 h in VPA) by giving each
  new sample weight * 2^((t - t_ref) / half_life); CPU samples weigh the CPU request
  (at least 0.1 core), memory samples 1;
- target = P90 * (1 + 15 % margin); lower bound = P50 * 1.15 * (1 + 0.001/conf)^-2;
  upper bound = P95 * 1.15 * (1 + 1/conf), with confidence conf = min(history in days,
  samples / samples-per-day), so a young history gives a wide band;
- minimums 25 millicores and 250 MB.
Updater (mode Auto): a stage whose request lies outside [lower, upper] is moved to the
target, by restarting its replicas (a rolling restart in the simulator).

CPU usage per replica comes from the context: util (cores used per allocated core) times
cores. The context has no memory usage, so memory is recommended only when
`memory_need_mb` (the per-replica working set a metrics server would report, e.g. from the
profile) is given; a replica below its need counts as an OOM, recorded like VPA does as
max(1.2 x request, request + 100 MB). GPU stages are left alone (no resource action).
Real VPA's updater also refuses to evict workloads with fewer than 2 replicas
(`--min-replicas`); here that is `min_replicas_for_update`, 1 by default so that the
paper's one-replica setting is resized at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.proposal import Proposal, hold, resize
from sair_ray.types import StageKind

DAY_S = 86400.0


class DecayingHistogram:
    """VPA's exponential-bucket histogram with exponentially growing sample weights."""

    def __init__(self, first_bucket: float, max_value: float, ratio: float = 1.05,
                 half_life_s: float = DAY_S) -> None:
        if not (first_bucket > 0 and ratio > 1 and max_value > first_bucket):
            raise ValueError("need first_bucket > 0, ratio > 1, max_value > first_bucket")
        self.first, self.ratio, self.half_life = first_bucket, ratio, half_life_s
        n = math.ceil(math.log(1 + max_value * (ratio - 1) / first_bucket, ratio)) + 1
        self.weights = np.zeros(n)
        self.ref_t: float | None = None

    def bucket_start(self, i: int) -> float:
        return self.first * (self.ratio ** i - 1) / (self.ratio - 1)

    def bucket(self, x: float) -> int:
        if x < self.first:
            return 0
        i = int(math.floor(math.log(1 + x * (self.ratio - 1) / self.first, self.ratio)))
        return min(i, len(self.weights) - 1)

    def add(self, x: float, weight: float, t: float) -> None:
        if self.ref_t is None:
            self.ref_t = t
        exponent = (t - self.ref_t) / self.half_life
        if exponent > 100:  # keep weights finite: move the reference time forward
            self.weights *= 2.0 ** -exponent
            self.ref_t, exponent = t, 0.0
        self.weights[self.bucket(max(0.0, x))] += weight * 2.0 ** exponent

    @property
    def empty(self) -> bool:
        return not self.weights.any()

    def percentile(self, p: float) -> float:
        """The end of the bucket holding the p-th weighted percentile (as VPA returns it)."""
        if self.empty:
            return 0.0
        cum = np.cumsum(self.weights)
        i = int(np.searchsorted(cum, p * cum[-1], side="left"))
        return self.bucket_start(min(i + 1, len(self.weights) - 1))


@dataclass(frozen=True)
class Recommendation:
    target: float
    lower: float
    upper: float


class _StageHistory:
    def __init__(self, half_life_s: float) -> None:
        self.cpu = DecayingHistogram(0.01, 1000.0, half_life_s=half_life_s)
        self.mem = DecayingHistogram(10.0, 1e6, half_life_s=half_life_s)
        self.first_t: float | None = None
        self.samples = 0


class VPA:
    name = "vpa"

    def __init__(self, half_life_s: float = DAY_S, target_percentile: float = 0.9,
                 lower_percentile: float = 0.5, upper_percentile: float = 0.95,
                 safety_margin: float = 0.15, min_cpu_m: int = 25, min_mem_mb: int = 250,
                 memory_need_mb: Mapping[str, float] | None = None,
                 samples_per_day: float = 1440.0, min_replicas_for_update: int = 1,
                 validator: ValidatorConfig | None = None) -> None:
        if not 0 < lower_percentile <= target_percentile <= upper_percentile < 1:
            raise ValueError("need 0 < lower <= target <= upper percentile < 1")
        self.half_life_s = half_life_s
        self.p_target, self.p_lower, self.p_upper = (target_percentile, lower_percentile,
                                                     upper_percentile)
        self.margin = safety_margin
        self.min_cpu_m, self.min_mem_mb = min_cpu_m, min_mem_mb
        self.memory_need_mb = dict(memory_need_mb or {})
        self.samples_per_day = samples_per_day
        self.min_replicas_for_update = min_replicas_for_update
        self.validator = validator
        self._hist: dict[str, _StageHistory] = {}

    def _confidence(self, h: _StageHistory, now: float) -> float:
        assert h.first_t is not None
        return min((now - h.first_t) / DAY_S, h.samples / self.samples_per_day)

    def recommend(self, hist: DecayingHistogram, conf: float, floor: float) -> Recommendation:
        m = 1.0 + self.margin
        target = max(floor, hist.percentile(self.p_target) * m)
        lower = hist.percentile(self.p_lower) * m
        upper = hist.percentile(self.p_upper) * m
        if conf > 0:
            lower *= (1 + 0.001 / conf) ** -2
            upper *= 1 + 1 / conf
        else:
            lower, upper = 0.0, math.inf
        return Recommendation(target, max(floor, lower), max(floor, upper))

    def decide(self, request: PolicyRequest) -> PolicyReply:
        now = request.now
        proposal: Proposal = {}
        notes = []
        for obs in request.context.stages:
            if obs.kind is StageKind.GPU:
                proposal[obs.name] = hold()
                continue
            spec = request.pipeline.stage(obs.name)
            h = self._hist.setdefault(obs.name, _StageHistory(self.half_life_s))
            if h.first_t is None:
                h.first_t = now
            cores = obs.cpu_m / 1000.0
            h.cpu.add(obs.util * cores, max(cores, 0.1), now)
            need = self.memory_need_mb.get(obs.name)
            if need is not None:
                sample = need if obs.mem_mb >= need else max(1.2 * obs.mem_mb, obs.mem_mb + 100)
                h.mem.add(sample, 1.0, now)
            h.samples += 1
            conf = self._confidence(h, now)
            cpu = self.recommend(h.cpu, conf, self.min_cpu_m / 1000.0)
            cpu_m: int | None = None
            mem_mb: int | None = None
            if not cpu.lower <= cores <= cpu.upper:
                cpu_m = int(min(spec.cpu_m_max, max(spec.cpu_m_min,
                                                    math.ceil(cpu.target * 1000))))
            if need is not None:
                mem = self.recommend(h.mem, conf, float(self.min_mem_mb))
                if not mem.lower <= obs.mem_mb <= mem.upper:
                    mem_mb = int(min(spec.mem_mb_max, max(spec.mem_mb_min,
                                                          math.ceil(mem.target))))
            if (cpu_m, mem_mb) != (None, None) and obs.replicas >= self.min_replicas_for_update:
                cpu_m = obs.cpu_m if cpu_m is None else cpu_m
                mem_mb = obs.mem_mb if mem_mb is None else mem_mb
                proposal[obs.name] = resize(cpu_m, mem_mb)
                notes.append(f"{obs.name}: -> {cpu_m}m, "
                             f"{mem_mb} MB (cpu target {cpu.target:.2f} cores, "
                             f"band [{cpu.lower:.2f}, {cpu.upper:.2f}])")
            else:
                proposal[obs.name] = hold()
        return PolicyReply(proposal=proposal,
                           rationale="vpa: " + ("; ".join(notes) or "within bounds"))

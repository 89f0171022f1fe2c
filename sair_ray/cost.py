"""Cost rates of allocations (docs/algorithm.md §9), in $ per hour.

Billable: every replica pays its CPU and memory share, and a GPU replica pays for its whole
GPU(s). Effective: a GPU replica pays only `rate` of its GPU(s), the share a rate-limited
replica leaves to co-located work (meaningful when GPUs are time-sliced or MIG-shared).
"""

from __future__ import annotations

from collections.abc import Mapping

from sair_ray.config import CostConfig, ValidatorConfig
from sair_ray.types import PipelineSpec, StageAllocation


class CostModel:
    def __init__(self, pipeline: PipelineSpec, prices: CostConfig) -> None:
        self.pipeline = pipeline
        self.prices = prices

    def replica_rate(self, stage: str, a: StageAllocation, *, effective: bool) -> float:
        p = self.prices
        spec = self.pipeline.stage(stage)
        rate = a.cpu_m / 1000 * p.cpu_core_per_h + a.mem_mb / 1024 * p.mem_gb_per_h
        if spec.is_gpu:
            rate += spec.gpus_per_replica * p.gpu_per_h * (a.rate if effective else 1.0)
        return rate

    def rate(self, allocation: Mapping[str, StageAllocation], *, effective: bool = True) -> float:
        return sum(a.replicas * self.replica_rate(name, a, effective=effective)
                   for name, a in allocation.items())

    def max_rate(self, v: ValidatorConfig) -> float:
        """C_max: an upper bound of the cost rate of any feasible allocation.

        Every stage at its largest box corner, with each resource capped by the cluster's
        capacity (no feasible allocation uses more than the cluster has).
        """
        p, c = self.prices, self.pipeline.cluster
        cpus = mem_mb = gpus = 0.0
        for s in self.pipeline.stages:
            lim = s.limits(v)
            cpus += lim.replicas_max * lim.cpu_m_max / 1000
            mem_mb += lim.replicas_max * lim.mem_mb_max
            if s.is_gpu:
                gpus += lim.replicas_max * s.gpus_per_replica
        cpus, mem_mb, gpus = min(cpus, c.cpus), min(mem_mb, c.memory_mb), min(gpus, c.gpus)
        return max(cpus * p.cpu_core_per_h + mem_mb / 1024 * p.mem_gb_per_h
                   + gpus * p.gpu_per_h, 1e-9)

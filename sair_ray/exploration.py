"""Forced exploration (docs/algorithm.md §5): epsilon-greedy probes with a decaying epsilon.

A probe picks one stage uniformly, one of its action dimensions uniformly, and one
non-zero step of that dimension uniformly, and is expressed as an absolute-target
proposal so it goes through the validator like any other action. The step grid per
dimension is {-max, -max/2, +max/2, +max} of the validator's per-step maximum (replicas:
{-2, -1, +1, +2} with the defaults).

`exploration.safe` (a production guard, off by default as §5 probes both ways) keeps
the probes that cannot hurt serving: positive steps only, and no CPU or memory step on a
stage with a single replica, because a resize is a redeploy that restarts the replica
(Ray Serve replaces it; a one-replica stage serves nothing meanwhile).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sair_ray.config import ExplorationConfig, ValidatorConfig
from sair_ray.proposal import Proposal, resize, scale_replicas, set_rate
from sair_ray.types import PipelineSpec, StageAllocation


@dataclass
class EpsilonSchedule:
    cfg: ExplorationConfig
    epsilon: float = -1.0

    def __post_init__(self) -> None:
        if self.epsilon < 0:
            self.epsilon = self.cfg.epsilon_0

    def draw(self, rng: np.random.Generator) -> bool:
        """True if this round probes. Decays epsilon either way (one call per round)."""
        probe = bool(rng.random() < self.epsilon)
        self.epsilon = max(self.cfg.epsilon_min, self.epsilon * self.cfg.epsilon_decay)
        return probe


def step_grid(dim: str, v: ValidatorConfig) -> list[float]:
    if dim == "replicas":
        return [float(s) for s in range(-v.max_replica_step, v.max_replica_step + 1) if s]
    top = {"cpu_m": v.max_cpu_step_m, "mem_mb": v.max_mem_step_mb, "rate": v.max_rate_step}[dim]
    return [-top, -top / 2, top / 2, top]


def probe(pipeline: PipelineSpec, current: Mapping[str, StageAllocation], v: ValidatorConfig,
          rng: np.random.Generator, *, safe: bool = False) -> Proposal:
    """A random one-step proposal; `safe` keeps only the steps that add capacity without
    restarting a stage's only replica (see the module docstring)."""
    stage = pipeline.stages[int(rng.integers(len(pipeline.stages)))]
    cur = current[stage.name]
    dims = ["replicas", "rate"] if stage.is_gpu else ["replicas", "cpu_m", "mem_mb"]
    if safe and cur.replicas <= 1:
        dims = [d for d in dims if d not in ("cpu_m", "mem_mb")]
    dim = dims[int(rng.integers(len(dims)))]
    grid = step_grid(dim, v)
    if safe:
        grid = [g for g in grid if g > 0]
    step = grid[int(rng.integers(len(grid)))]
    if dim == "replicas":
        return {stage.name: scale_replicas(cur.replicas + int(step))}
    if dim == "rate":
        return {stage.name: set_rate(round(cur.rate + step, 6))}
    if dim == "cpu_m":
        return {stage.name: resize(cpu_m=int(cur.cpu_m + step))}
    return {stage.name: resize(mem_mb=int(cur.mem_mb + step))}

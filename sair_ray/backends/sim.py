"""SimBackend: the Backend port over the discrete-event simulator, in virtual time.

The controller drives it exactly like a live backend, plus `advance_to`:

    backend = SimBackend("image_classification", seed=1)
    while t <= until:
        backend.advance_to(t)
        ctx = backend.observe(t - window, t)
        ...
        backend.apply(targets, t)
        t += interval

Runs are reproducible from the seed, and two backends with the same seed and workload see
the same requests whatever the policy does, so policies can be compared pairwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sair_ray.config import CostConfig
from sair_ray.profiles import Profile, load_profile
from sair_ray.sim.engine import Simulation
from sair_ray.sim.metrics import SimTotals, WindowMetrics
from sair_ray.types import ClusterResources, Context, PipelineSpec, StageAllocation
from sair_ray.workloads import Workload, workload_from_dict


class SimBackend:
    def __init__(self, profile: Profile | str | Path,
                 workload: Workload | Mapping[str, Any] | None = None, *, seed: int = 0,
                 rng: np.random.Generator | None = None, cost: CostConfig | None = None,
                 effective_cost: bool = True, start: float = 0.0,
                 allocation: Mapping[str, StageAllocation] | None = None,
                 **sim_options: Any) -> None:
        """`profile`: a Profile, a shipped profile name or a YAML path. `workload`: a
        Workload, its YAML mapping, or None for the profile's default. `rng` overrides
        `seed`. `sim_options` go to `Simulation` (block_s, retain_s,
        failure_latency_factor)."""
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        if workload is None:
            workload = self.profile.default_workload()
        elif isinstance(workload, Mapping):
            workload = workload_from_dict(workload, base_dir=self.profile.base_dir)
        self.workload: Workload = workload
        self.effective_cost = effective_cost
        self.sim = Simulation(self.profile, workload,
                              rng if rng is not None else np.random.default_rng(seed),
                              cost=cost, allocation=allocation, start=start, **sim_options)

    # -- Backend protocol -------------------------------------------------------------------
    @property
    def pipeline(self) -> PipelineSpec:
        return self.profile.pipeline

    def observe(self, start: float, end: float) -> Context:
        """Context over [start, end) (the simulation is advanced to `end` if needed)."""
        return self.window(start, end).to_context(self.pipeline.name, self.pipeline.sla_ms,
                                                  effective=self.effective_cost)

    def apply(self, target: Mapping[str, StageAllocation], now: float) -> None:
        self.sim.apply(target, now)

    def free_resources(self) -> ClusterResources:
        return self.sim.free_resources()

    # -- virtual time and richer metrics ------------------------------------------------------
    def advance_to(self, t: float) -> None:
        self.sim.run_until(t)

    @property
    def now(self) -> float:
        return self.sim.now

    def window(self, start: float, end: float) -> WindowMetrics:
        """Everything the simulator measured over [start, end), beyond the Context:
        billable and effective cost, drops, in-flight requests, per-stage details."""
        return self.sim.window(start, end)

    def totals(self) -> SimTotals:
        """Since the start: requests, completions, failures, $ spent (for $/1000 requests)."""
        return self.sim.totals()

"""Pipeline simulator: discrete-event engine, stage models and what it measures.

Entry point: `Simulation(profile, workload, rng)`, with a profile from `sair_ray.profiles`
and a workload from `sair_ray.workloads`; `sair_ray.backends.sim.SimBackend` wraps it as a
controller backend. See docs/simulator.md.
"""

from sair_ray.sim.distributions import Dist
from sair_ray.sim.engine import Simulation
from sair_ray.sim.metrics import SimTotals, StageMetrics, WindowMetrics
from sair_ray.sim.model import StageModel, WorkTerm

__all__ = ["Dist", "SimTotals", "Simulation", "StageMetrics", "StageModel", "WindowMetrics",
           "WorkTerm"]

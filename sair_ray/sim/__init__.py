"""Pipeline simulator: discrete-event engine, stage models, profiles and workloads.

Entry points: `load_profile` (a shipped or custom pipeline profile), the workloads
(`Poisson`, `Ramp`, `Burst`, `TraceReplay`, `azure_llm_trace`, `workload_from_dict`) and
`Simulation`; `sair_ray.backends.sim.SimBackend` wraps it as a controller backend.
See docs/simulator.md.
"""

from sair_ray.sim.distributions import Dist
from sair_ray.sim.engine import Simulation
from sair_ray.sim.metrics import SimTotals, StageWindow, WindowMetrics
from sair_ray.sim.model import StageModel, WorkTerm
from sair_ray.sim.profiles import (
    Profile,
    ProfileError,
    list_profiles,
    load_profile,
    profile_from_dict,
    profile_from_yaml,
)
from sair_ray.sim.workloads import (
    AZURE_CREDIT,
    Arrivals,
    Burst,
    Poisson,
    Ramp,
    TraceReplay,
    Workload,
    WorkloadError,
    azure_llm_trace,
    find_trace,
    load_workload,
    workload_from_dict,
)

__all__ = [
    "AZURE_CREDIT", "Arrivals", "Burst", "Dist", "Poisson", "Profile", "ProfileError", "Ramp",
    "SimTotals", "Simulation", "StageModel", "StageWindow", "TraceReplay", "WindowMetrics",
    "WorkTerm", "Workload", "WorkloadError", "azure_llm_trace", "find_trace", "list_profiles",
    "load_profile", "load_workload", "profile_from_dict", "profile_from_yaml",
    "workload_from_dict",
]

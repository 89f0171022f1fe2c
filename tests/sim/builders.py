"""Small profiles built in code for simulator tests (real objects, no mocks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sair_ray.profiles import Profile, profile_from_dict
from sair_ray.sim.engine import Simulation
from sair_ray.workloads import Poisson, Workload


def stage(name: str, *, kind: str = "cpu", replicas: int = 1, cpu_m: int = 1000,
          mem_mb: int = 1024, rate: float | None = None, queue_max: int = 100_000,
          service: dict[str, Any] | None = None, **sim: Any) -> dict[str, Any]:
    initial: dict[str, Any] = {"replicas": replicas, "cpu_m": cpu_m, "mem_mb": mem_mb}
    if rate is not None:
        initial["rate"] = rate
    return {"name": name, "kind": kind, "queue_max": queue_max, "cpu_m_max": 8000,
            "mem_mb_max": 16384, "mem_mb_min": 128, "initial": initial,
            "sim": {"service": service or {"dist": "exponential", "mean_ms": 100},
                    "cold_start_s": 0, **sim}}


def profile(*stages: dict[str, Any], sla_ms: float = 1000.0,
            cluster: dict[str, float] | None = None) -> Profile:
    d: dict[str, Any] = {"name": "test", "sla_ms": sla_ms, "stages": list(stages)}
    if cluster:
        d["cluster"] = cluster
    return profile_from_dict(d)


def sim(p: Profile, workload: Workload | float, seed: int = 0, **kw: Any) -> Simulation:
    w = Poisson(workload) if isinstance(workload, int | float) else workload
    return Simulation(p, w, np.random.default_rng(seed), retain_s=None, **kw)

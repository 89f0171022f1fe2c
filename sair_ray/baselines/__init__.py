"""Baseline autoscalers, each a `Policy` (SPEC 6 absolute targets; they may keep state).

`make_baseline(name, **params)` builds one by name:

| name | class | rule |
|---|---|---|
| static | Static | one replica per stage, forever |
| hpa | HPA | Kubernetes HPA on utilisation (70 % target, 60 s down window) |
| vpa | VPA | Kubernetes VPA recommender + updater (CPU/memory by restart) |
| threshold | Threshold | per-stage p99 thresholds (100 ms CPU, 200 ms GPU), 60 s cooldown |
| ray_serve | RayServeDefault | Ray Serve's default target_ongoing_requests policy |
| oracle | Oracle | clairvoyant: cheapest allocation meeting the SLA by Erlang C |

`oracle` needs `profile` and `workload`; `vpa` takes an optional `profile` to know each
stage's memory working set.
"""

from __future__ import annotations

from typing import Any

from sair_ray.baselines.hpa import HPA, hpa_desired
from sair_ray.baselines.oracle import Oracle, Plan
from sair_ray.baselines.ray_serve import RayServeDefault
from sair_ray.baselines.static import Static
from sair_ray.baselines.threshold import Threshold
from sair_ray.baselines.vpa import VPA
from sair_ray.policy.base import Policy
from sair_ray.sim.profiles import Profile

BASELINES = ("static", "hpa", "vpa", "threshold", "ray_serve", "oracle")
_ALIASES = {"hpa-cpu": "hpa", "hpa_cpu": "hpa", "ray-serve": "ray_serve",
            "rayserve": "ray_serve"}


def make_baseline(name: str, **params: Any) -> Policy:
    """A baseline policy by name; `params` go to its constructor."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "static":
        return Static(**params)
    if key == "hpa":
        return HPA(**params)
    if key == "threshold":
        return Threshold(**params)
    if key == "ray_serve":
        return RayServeDefault(**params)
    if key == "vpa":
        profile = params.pop("profile", None)
        if isinstance(profile, Profile) and "memory_need_mb" not in params:
            params["memory_need_mb"] = {s.name: m.mem_need_mb for s, m in zip(
                profile.pipeline.stages, profile.models, strict=True) if m.mem_need_mb > 0}
        return VPA(**params)
    if key == "oracle":
        missing = [k for k in ("profile", "workload") if k not in params]
        if missing:
            raise ValueError(f"the oracle baseline needs {' and '.join(missing)} "
                             "(it plans from the profile and the future workload)")
        return Oracle(**params)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "HPA", "VPA", "Oracle", "Plan", "RayServeDefault", "Static",
           "Threshold", "hpa_desired", "make_baseline"]

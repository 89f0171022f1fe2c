"""Baseline autoscalers, each a `Policy` (docs/algorithm.md §6 absolute targets; they may
keep state). `sair_ray.registry` builds them by name (`make_policy`):

| name | class | rule |
|---|---|---|
| static | Static | one replica per stage, forever |
| hpa | HPA | Kubernetes HPA on utilisation (70 % target, 60 s down window) |
| vpa | VPA | Kubernetes VPA recommender + updater (CPU/memory by restart) |
| threshold | Threshold | per-stage p99 thresholds (100 ms CPU, 200 ms GPU), 60 s cooldown |
| ray_serve | RayServeDefault | Ray Serve's default target_ongoing_requests policy |
| oracle | Oracle | clairvoyant: cheapest allocation meeting the SLA by Erlang C |

`oracle` needs `profile` and `workload`; `vpa` takes `memory_need_mb` (the registry derives
it from a profile) to know each stage's memory working set.
"""

from __future__ import annotations

from sair_ray.baselines.hpa import HPA, hpa_desired
from sair_ray.baselines.oracle import Oracle, Plan
from sair_ray.baselines.ray_serve import RayServeDefault
from sair_ray.baselines.static import Static
from sair_ray.baselines.threshold import Threshold
from sair_ray.baselines.vpa import VPA

__all__ = ["HPA", "VPA", "Oracle", "Plan", "RayServeDefault", "Static", "Threshold",
           "hpa_desired"]

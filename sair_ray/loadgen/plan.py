"""Arrival schedules for live load: the simulator's workloads, sampled once up front.

The same `Workload` classes drive the simulator and `sair load`, so a bench scenario and a
live run see the same arrival process (same seed, same times).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sair_ray.workloads import (
    AZURE_CREDIT,
    Burst,
    Poisson,
    Ramp,
    TraceReplay,
    Workload,
    WorkloadError,
    workload_from_dict,
)

PATTERNS = ("poisson", "ramp", "burst", "trace")


@dataclass(frozen=True)
class LoadPlan:
    """Send times in seconds from the start (sorted) and per-request trace attributes."""

    times: np.ndarray
    attrs: Mapping[str, np.ndarray] = field(default_factory=dict)
    workload: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    credit: str = ""

    def __len__(self) -> int:
        return len(self.times)


def build_plan(workload: Workload, duration_s: float, *, seed: int = 0,
               max_requests: int | None = None) -> LoadPlan:
    """Sample `workload` over [0, duration_s); keep at most `max_requests` arrivals."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise WorkloadError(f"duration must be > 0 seconds, got {duration_s}")
    if max_requests is not None and max_requests < 1:
        raise WorkloadError(f"max requests must be >= 1, got {max_requests}")
    arr = workload.sample(0.0, duration_s, np.random.default_rng(seed))
    times, attrs = arr.times, dict(arr.attrs)
    if max_requests is not None and len(times) > max_requests:
        times = times[:max_requests]
        attrs = {k: v[:max_requests] for k, v in attrs.items()}
    credit = AZURE_CREDIT if isinstance(workload, TraceReplay) else ""
    return LoadPlan(np.asarray(times, dtype=float), attrs, workload.to_dict(), duration_s,
                    credit)


def workload_from_options(pattern: str, *, rate: float | None = None,
                          start_rate: float | None = None, end_rate: float | None = None,
                          base: float | None = None, spike: float | None = None,
                          period_s: float | None = None, spike_s: float | None = None,
                          trace: str = "azure", time_scale: float = 1.0,
                          rate_scale: float = 1.0, duration_s: float = 60.0) -> Workload:
    """The workload the `sair load` options describe; errors name the missing option."""

    def need(value: float | None, option: str) -> float:
        if value is None:
            raise WorkloadError(f"pattern {pattern!r} needs {option}")
        return value

    try:
        if pattern == "poisson":
            return Poisson(need(rate, "--rate"))
        if pattern == "ramp":
            return Ramp(need(start_rate, "--from"), need(end_rate, "--to"), duration_s)
        if pattern == "burst":
            period = need(period_s, "--period")
            return Burst(need(base, "--base"), need(spike, "--spike"), period,
                         need(spike_s, "--spike-s"))
        if pattern == "trace":
            return workload_from_dict({"kind": "trace", "path": trace,
                                       "time_scale": time_scale, "rate_scale": rate_scale},
                                      "trace")
    except WorkloadError:
        raise
    except (ValueError, TypeError) as e:
        raise WorkloadError(f"pattern {pattern!r}: {e}") from None
    raise WorkloadError(f"unknown pattern {pattern!r}; patterns: {', '.join(PATTERNS)}")

"""An `AppWindow` as the controller's `Context` (docs/algorithm.md §2): the one conversion
every live metrics source shares (the Ray Serve backend and the Kubernetes operator)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sair_ray.types import Context, PipelineSpec, StageAllocation, StageObservation


def _finite(x: float | None, default: float = 0.0) -> float:
    return float(x) if x is not None and math.isfinite(x) else default


def context_from_window(w: Any, pipeline: PipelineSpec,
                        allocation: Mapping[str, StageAllocation]) -> Context:
    """A `sair_ray.observe.AppWindow` as the controller's Context.

    A stage that has not reported yet (no request reached it) shows zero load; a GPU
    stage's utilisation is the shim's busy time divided by its rate (busy relative to its
    quota); a window in which requests arrived but none finished has an unknown (NaN)
    latency, i.e. the worst case.
    """
    stages = []
    for spec in pipeline.stages:
        a = allocation[spec.name]
        sw = w.stages.get(spec.name)
        if sw is None:
            stages.append(StageObservation(spec.name, spec.kind, a.replicas, a.cpu_m,
                                           a.mem_mb, a.rate))
            continue
        util = _finite(sw.util)
        if spec.is_gpu and sw.gpu_util is not None:
            util = sw.gpu_util / max(a.rate, 1e-9)
        stages.append(StageObservation(
            name=spec.name, kind=spec.kind, replicas=a.replicas, cpu_m=a.cpu_m,
            mem_mb=a.mem_mb, rate=a.rate, queue=float(sw.queue), util=util,
            p50_ms=_finite(sw.p50_ms), p99_ms=_finite(sw.p99_ms),
            queue_delay_ms=_finite(sw.queue_delay_ms), throughput_rps=float(sw.throughput_rps)))
    p50, p99 = _finite(w.p50_ms), _finite(w.p99_ms)
    if w.completions == 0 and (w.arrivals > 0 or w.in_flight > 0):
        p50 = p99 = math.nan
    return Context(app=pipeline.name, time=w.end, stages=tuple(stages),
                   arrival_rate=float(w.arrival_rate), p50_ms=p50, p99_ms=p99,
                   sla_ms=pipeline.sla_ms, errors=int(w.errors), drops=0)

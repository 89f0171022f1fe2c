"""The metrics port: where a live backend's per-stage and end-to-end numbers come from.

A `MetricsSource` answers `window(start, end) -> AppWindow`; the backend that owns the
pipeline's allocation turns that window into the controller's `Context` with
`context_from_window`, the one conversion every source shares. Sources:

- `sair_ray.observe.MetricsClient`: the Serve app's metrics actor (the Ray Serve backend's
  default; the Kubernetes operator's `RayMetrics` reads it over Ray Client);
- `sair_ray.backends.serve_metrics.ServeMetrics`: Ray Serve's built-in Prometheus metrics,
  from every node's metrics agent or from a Prometheus server (no code in the app);
- `sair_ray.operator.metrics.SimulatedMetrics`: the simulator, for `sair operator
  --dry-run`; it also follows every actuation (`FollowsAllocation`).

`AppWindow` and `StageWindow` are frozen dataclasses (`AppWindow.to_dict()` for JSON);
sair_ray/observe/__init__.py says where each number of the Serve metrics actor comes from,
docs/metrics.md where each comes from with `sair_ray.backends.serve_metrics.ServeMetrics`
(Ray Serve's own Prometheus metrics: no code in the app). `AppWindow.partial` lists why a
window is incomplete (a stage not reporting yet, a source's first window); empty when not.
The simulator backend (`backends/sim.py`) is not a metrics source: it measures more (cost,
per-stage drops) and builds its own `Context` (`sair_ray.sim.metrics.WindowMetrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from sair_ray.types import Context, PipelineSpec, StageAllocation, StageObservation

NAN = float("nan")


@dataclass(frozen=True)
class StageWindow:
    """One stage (Serve deployment) over one window."""

    name: str
    replicas: int = 0        # replicas serving: the ones `util` is an average over
    arrivals: int = 0
    completions: int = 0
    errors: int = 0
    p50_ms: float = NAN
    p99_ms: float = NAN
    queue_delay_ms: float = NAN
    queue: int = 0
    ongoing: int = 0
    util: float = NAN
    throughput_rps: float = 0.0
    gpu_util: float | None = None


@dataclass(frozen=True)
class AppWindow:
    """A whole application over one window: ingress (end-to-end) numbers plus every stage."""

    app: str
    start: float
    end: float
    stages: dict[str, StageWindow] = field(default_factory=dict)
    arrivals: int = 0
    arrival_rate: float = 0.0
    completions: int = 0
    errors: int = 0
    p50_ms: float = NAN
    p95_ms: float = NAN
    p99_ms: float = NAN
    in_flight: int = 0
    drops: int = 0          # requests refused (full queue); 0 where the source has no count
    # the histogram bucket p99_ms was interpolated in, where it came from one (Serve's
    # metrics); (nan, nan) where it is exact
    p99_bucket_ms: tuple[float, float] = (NAN, NAN)
    # Why this window is incomplete, one human-readable reason each (e.g. "stage post: no
    # samples yet"); () when complete. A partial window is still a valid reading.
    partial: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN becomes None."""
        return _clean(asdict(self))


COARSE_BUCKET_RATIO = 2.0   # a p99 bucket wider than this ratio cannot place the SLA


def coarse_sla_reading(w: AppWindow, sla_ms: float) -> str:
    """Why this window's p99 cannot say whether the SLA was met ("" when it can): it was
    interpolated in a histogram bucket that holds the SLA and spans more than
    `COARSE_BUCKET_RATIO` (Serve's default buckets go from 10 s to 60 s)."""
    lo, hi = w.p99_bucket_ms
    if not (sla_ms > 0 and lo > 0 and lo < sla_ms <= hi) or hi / lo <= COARSE_BUCKET_RATIO:
        return ""
    return (f"p99 is read from a latency histogram bucket {lo:g}-{hi:g} ms wide around the "
            f"{sla_ms:g} ms SLA, so rounds may read the SLA violated when it is not (or the "
            "reverse); set RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS on every node (`ray start`) "
            "to buckets at most 1.5x apart around the SLA (docs/metrics.md)")


@runtime_checkable
class MetricsSource(Protocol):
    """Where a live backend's metrics come from."""

    def window(self, start: float, end: float) -> AppWindow:
        """Metrics over [start, end) (the backend's clock: wall-clock seconds when live)."""
        ...


class WallWindows:
    """A source stamped with the wall clock (what replicas and Prometheus record), read by
    a host whose round times come from a `sair_ray.session.SteadyClock`: each window is
    asked for at the round's times plus `wall_offset()` (0 until the system clock has
    stepped), and comes back with the round's times, so the controller's clock and the
    replicas' can drift apart without the windows going empty."""

    def __init__(self, inner: MetricsSource, wall_offset: Callable[[], float]) -> None:
        self.inner = inner
        self.wall_offset = wall_offset

    def __repr__(self) -> str:
        return f"WallWindows({self.inner!r})"

    def window(self, start: float, end: float) -> AppWindow:
        off = self.wall_offset()
        if off == 0.0:
            return self.inner.window(start, end)
        w = self.inner.window(start + off, end + off)
        return replace(w, start=w.start - off, end=w.end - off)


@runtime_checkable
class FollowsAllocation(Protocol):
    """Optional: a source that must be told every actuation (a simulator runs the pipeline
    itself; live sources see the change by themselves)."""

    def allocation_changed(self, target: Mapping[str, StageAllocation], now: float) -> None:
        ...


def context_from_window(w: AppWindow, pipeline: PipelineSpec,
                        allocation: Mapping[str, StageAllocation]) -> Context:
    """A window as the controller's Context (docs/algorithm.md §2), for a pipeline running
    `allocation` (the backend's reading of what is deployed).

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
            queue_delay_ms=_finite(sw.queue_delay_ms), throughput_rps=float(sw.throughput_rps),
            serving=float(sw.replicas)))
    p50, p99 = _finite(w.p50_ms), _finite(w.p99_ms)
    if w.completions == 0 and (w.arrivals > 0 or w.in_flight > 0):
        p50 = p99 = math.nan
    return Context(app=pipeline.name, time=w.end, stages=tuple(stages),
                   arrival_rate=float(w.arrival_rate), p50_ms=p50, p99_ms=p99,
                   sla_ms=pipeline.sla_ms, errors=int(w.errors), drops=int(w.drops),
                   partial=tuple(w.partial))


def _finite(x: float | None, default: float = 0.0) -> float:
    return float(x) if x is not None and math.isfinite(x) else default


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

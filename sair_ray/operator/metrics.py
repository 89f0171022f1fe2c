"""Metrics sources for the Kubernetes backend (`sair_ray.backends.metrics.MetricsSource`).

- `ServePrometheusMetrics` (`metrics.source: prometheus`): Ray Serve's own metrics of the
  application, read from a Prometheus server that scrapes the RayService's pods (the
  usual KubeRay + Prometheus set-up; `sair_ray.backends.serve_metrics`): no Ray Client,
  no code in the app.
- `RayMetrics` (`metrics.source: ray`): the app's StageMeter metrics actor, read through
  `sair_ray.observe.MetricsClient` from the Ray cluster the RayService runs (over Ray
  Client, `ray://<rayservice>-head-svc.<namespace>.svc:10001` by default).
- `SimulatedMetrics`: the discrete-event simulator of a shipped pipeline profile, following
  every allocation SAIR applies. It is what `sair operator --dry-run` observes, and it lets
  an operator be exercised end to end without a Serve application under load.

Both return the port's `AppWindow`; the backend turns it into a `Context`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sair_ray.backends.metrics import AppWindow, StageWindow
from sair_ray.backends.sim import SimBackend
from sair_ray.sim.metrics import WindowMetrics
from sair_ray.types import PipelineSpec, StageAllocation

log = logging.getLogger(__name__)


class MetricsSourceError(RuntimeError):
    """A metrics source cannot be built (missing package, unknown profile, no Ray)."""


class SimulatedMetrics:
    def __init__(self, profile: str, stages: tuple[str, ...], *, start: float,
                 allocation: Mapping[str, StageAllocation] | None = None,
                 workload: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        from sair_ray.profiles import ProfileError

        try:
            self.sim = SimBackend(profile, workload, seed=seed, start=start,
                                  allocation=dict(allocation) if allocation else None)
        except ProfileError as e:
            raise MetricsSourceError(str(e)) from None
        have = self.sim.pipeline.stage_names
        if tuple(stages) != have:
            raise MetricsSourceError(
                f"simulator profile {profile!r} has stages {list(have)}, the autoscaler "
                f"names {list(stages)}; they must be the same, in the same order")

    def window(self, start: float, end: float) -> AppWindow:
        """The simulator tracks its own allocation (every apply is forwarded to it)."""
        self.sim.advance_to(end)
        return app_window(self.sim.window(start, end), self.sim.pipeline.name)

    def allocation_changed(self, target: Mapping[str, StageAllocation], now: float) -> None:
        self.sim.advance_to(now)
        self.sim.apply(target, now)


class RayMetrics:
    """Live metrics of Serve application `app`, from the Ray cluster at `address`.

    Ray allows one cluster connection per process, so one operator process can read live
    metrics from one Ray cluster: autoscalers of RayServices in other Ray clusters need
    their own operator (or `metrics.source: simulator`)."""

    def __init__(self, app: str, pipeline: PipelineSpec, *, address: str,
                 timeout_s: float = 10.0) -> None:
        try:
            import ray

            from sair_ray.observe import MetricsClient, MetricsUnavailable
        except ImportError as e:
            raise MetricsSourceError(f"metrics source 'ray' needs Ray: pip install "
                                     f"'sair-ray[apps]' ({e})") from None
        if not ray.is_initialized():
            log.info("connecting to the Ray cluster at %s for live metrics", address)
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except Exception as e:  # Ray raises ConnectionError, RuntimeError, ...
                raise MetricsSourceError(f"cannot connect to Ray at {address}: {e}") from None
        try:
            self.client = MetricsClient(app, timeout_s=timeout_s)
        except MetricsUnavailable as e:
            raise MetricsSourceError(str(e)) from None
        self.pipeline = pipeline

    def window(self, start: float, end: float) -> AppWindow:
        return self.client.window(start, end)


class ServePrometheusMetrics:
    """Ray Serve's metrics of application `app` from the Prometheus server at `url`.
    `deployments` maps each stage to its Serve deployment (stages that are plain
    Kubernetes Deployments have no Serve metrics: the window flags them as partial)."""

    def __init__(self, app: str, deployments: Mapping[str, str], *, url: str,
                 timeout_s: float = 10.0) -> None:
        from sair_ray.backends.serve_metrics import serve_metrics_source

        self.source = serve_metrics_source(app, list(deployments.values()), None,
                                           prometheus_url=url, timeout_s=timeout_s)
        self._stage_of = {dep: stage for stage, dep in deployments.items()}

    def window(self, start: float, end: float) -> AppWindow:
        w = self.source.window(start, end)
        stages = {self._stage_of.get(d, d): replace(sw, name=self._stage_of.get(d, d))
                  for d, sw in w.stages.items()}
        return replace(w, stages=stages)


def app_window(w: WindowMetrics, app: str) -> AppWindow:
    """A simulator window as the port's `AppWindow`. The simulator's end-to-end percentiles
    count failures and stalled requests too (docs/simulator.md), and its utilisation is
    already relative to a GPU stage's rate, so it goes in `util` with no `gpu_util`."""
    stages = {s.name: StageWindow(
        s.name, replicas=s.allocation.replicas, completions=s.completed, errors=s.errors,
        p50_ms=s.p50_ms, p99_ms=s.p99_ms, queue_delay_ms=s.queue_delay_ms, queue=s.queue,
        util=s.util, throughput_rps=s.throughput_rps) for s in w.stages}
    return AppWindow(app, w.start, w.end, stages, arrivals=w.arrivals,
                     arrival_rate=w.arrival_rate, completions=w.completed, errors=w.errors,
                     p50_ms=w.p50_ms, p99_ms=w.p99_ms, in_flight=max(w.in_flight, 0),
                     drops=w.drops)

"""`ServeMetrics`: a `MetricsSource` built on the Prometheus metrics Ray Serve exports by
itself, so the app needs no sair-ray code (docs/metrics.md maps every field).

Two ways in (sair_ray/observe/prometheus.py):

- `prometheus_url=None`: scrape every alive Ray node's metrics agent directly
  (`http://<node ip>:<MetricsExportPort>/metrics`; nodes from `ray.nodes()`, or
  `agents=[...]`). An agent answers only "now", so each `window()` differences this
  scrape against the previous round's: **the window runs from the previous scrape to
  this one**, whatever `start` was asked (rates use that real span). The very first
  window has nothing to difference: counts are 0 and the window is flagged `partial`.
- `prometheus_url="http://prometheus:9090"`: instant queries at `start` and `end` on the
  server's HTTP API; the window is the one asked for, to the server's scrape interval.

Per stage (Serve deployment `d` of application `app`; Ray prefixes every name `ray_`):

    replicas        ray_serve_deployment_replica_healthy (controller gauge, per replica)
    arrivals        increase of ray_serve_num_router_requests_total (every handle's router)
    completions     increase of ray_serve_deployment_request_counter_total (ok ones)
    errors          increase of ray_serve_deployment_error_counter_total
    p50/p99_ms      quantiles of the increase of ray_serve_deployment_processing_latency_ms
                    (histogram: bucket-resolution, interpolated like histogram_quantile)
    queue           sum over handles of ray_serve_deployment_queued_queries at the end
    ongoing         sum over replicas of ray_serve_replica_processing_queries at the end
    queue_delay_ms  mean of ray_serve_request_router_fulfillment_time_ms in the window (the
                    time a request waited at the handle for a replica); without it, Little's
                    law: queue / arrival rate
    util            processing time / replica-seconds in the window: the mean number of
                    requests in processing per replica (1 = one at a time, all the time;
                    an async handler can exceed 1). `max_ongoing={stage: n}` divides by the
                    slots per replica: Serve's own `serve_replica_utilization_percent`
                    formula, but over this window (the gauge averages over
                    RAY_SERVE_REPLICA_UTILIZATION_WINDOW_S, 600 s by default, reported
                    every 10 s); `util_from="serve_gauge"` uses that gauge / 100
    throughput_rps  completions / window span
    gpu_util        best effort: `gpu_stages` only, mean of DCGM_FI_DEV_GPU_UTIL (a DCGM
                    exporter) or Ray's ray_node_gpus_utilization over every GPU seen / 100;
                    None otherwise (node-level: right only if the stage is the GPUs' sole user)

App level: end-to-end at Serve's proxy for this application (ray_serve_num_http_requests
_total, ray_serve_num_http_error_requests_total, ray_serve_http_request_latency_ms, and
their gRPC twins); when the proxy recorded nothing in the window (traffic through a
handle, not HTTP), the ingress deployment's numbers stand in. arrivals: the ingress
stage's; in_flight: its queue + ongoing; drops: 0.

Per-replica CPU and memory (Ray's per-process `ray_component_cpu_percentage` /
`ray_component_rss_mb`, Component `ray::ServeReplica:<app>:<deployment>[.<method>]`) are
not part of the window; `ServeMetrics.usage` holds the last reading per stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sair_ray.backends.metrics import AppWindow, StageWindow
from sair_ray.observe.prometheus import (
    Histogram,
    Match,
    MetricsReadError,
    NodeAgents,
    PrometheusServer,
    Snapshot,
    align,
    counter_delta,
)

NAN = float("nan")
P = "ray_serve_"

# The families this source reads (without the `ray_` prefix Ray adds), for messages.
STAGE_FAMILIES = ("serve_deployment_replica_healthy", "serve_num_router_requests_total",
                  "serve_deployment_request_counter_total",
                  "serve_deployment_processing_latency_ms",
                  "serve_deployment_queued_queries", "serve_replica_processing_queries")
# What a scrape keeps (a Ray agent exports ~2000 series; parsing only these is ~10x faster).
PREFIXES = tuple(f"ray_serve_{f}" for f in (
    "deployment_replica_healthy", "num_router_requests_total",
    "deployment_request_counter_total", "deployment_error_counter_total",
    "deployment_processing_latency_ms_", "deployment_queued_queries{",
    "replica_processing_queries{", "replica_utilization_percent{",
    "request_router_fulfillment_time_ms_", "num_http_requests_total",
    "num_http_error_requests_total", "http_request_latency_ms_", "num_grpc_requests_total",
    "num_grpc_error_requests_total", "grpc_request_latency_ms_")) + (
    "ray_component_cpu_percentage", "ray_component_rss_mb", "ray_node_gpus_utilization",
    "DCGM_FI_DEV_GPU_UTIL")

# The same families as a PromQL name regex (Prometheus returns only what is needed).
SERVE_NAMES_RE = "|".join(
    p[:-1] if p.endswith("{") else p + "(bucket|sum|count)" if p.endswith("_") else p
    for p in PREFIXES if p.startswith("ray_serve_"))


class ServeMetricsError(MetricsReadError):
    """No usable metrics at all (no agent or server answered, or no Serve metric exists);
    the message names what is missing and the fix."""


@dataclass(frozen=True)
class StageUsage:
    """Per-stage process usage from Ray's per-process metrics, at the last read."""

    cpu_percent: float = 0.0   # summed over the stage's replica processes (100 = 1 core)
    rss_mb: float = 0.0        # summed resident memory
    processes: int = 0         # component series seen


class ServeMetrics:
    """A `MetricsSource` for one Serve application from Ray Serve's own metrics (see the
    module docstring). `stages`: the deployment names; `ingress`: the deployment HTTP
    requests enter (default: the first stage); `max_ongoing`: the concurrent requests one
    replica of a stage can really process (int for all, mapping per stage; default 1),
    the capacity `util` is relative to. Serve's `max_ongoing_requests` is the right value
    only where the handler truly runs that many at once (async I/O); it is often a queue
    bound (the shipped apps use 1000), which would make `util` read near 0."""

    def __init__(self, app: str, stages: Sequence[str], ingress: str | None = None, *,
                 prometheus_url: str | None = None, agents: Sequence[str] | None = None,
                 timeout_s: float = 2.0, max_ongoing: int | Mapping[str, int] | None = None,
                 util_from: Literal["window", "serve_gauge"] = "window",
                 gpu_stages: Sequence[str] = ()) -> None:
        if not stages:
            raise ValueError("ServeMetrics: no stages (deployment names) given")
        self.app = app
        self.stages = list(stages)
        self.ingress = ingress or self.stages[0]
        if self.ingress not in self.stages:
            raise ValueError(f"ServeMetrics: ingress {self.ingress!r} is not one of the "
                             f"stages {self.stages}")
        self.util_from = util_from
        self.gpu_stages = set(gpu_stages)
        if isinstance(max_ongoing, int):
            self._max_ongoing: dict[str, int] = dict.fromkeys(self.stages, max_ongoing)
        else:
            self._max_ongoing = dict.fromkeys(self.stages, 1)
            self._max_ongoing.update(max_ongoing or {})
        self.server = (PrometheusServer(prometheus_url, timeout_s=timeout_s)
                       if prometheus_url else None)
        self.agents = (None if self.server else
                       NodeAgents(agents, timeout_s=timeout_s, prefixes=PREFIXES))
        self._last: Snapshot | None = None
        self._fresh: list[str] = []
        self.usage: dict[str, StageUsage] = {}

    def __repr__(self) -> str:
        return f"ServeMetrics({self.app!r}, {self.stages}, via {self.server or self.agents})"

    # -- reading -----------------------------------------------------------------------------
    def _selectors(self) -> list[str]:
        app = _promql_str(self.app)
        sel = [f'{{__name__=~"{SERVE_NAMES_RE}",application="{app}"}}',
               f'{{__name__=~"ray_component_(cpu_percentage|rss_mb)",'
               f'Component=~"ray::ServeReplica:{_promql_re(self.app)}:.+"}}']
        if self.gpu_stages:   # every GPU the server knows: only when asked for
            sel.append('{__name__=~"ray_node_gpus_utilization|DCGM_FI_DEV_GPU_UTIL"}')
        return sel

    def _snapshots(self, start: float, end: float) -> tuple[Snapshot | None, Snapshot]:
        a: Snapshot | None
        if self.server is not None:
            sel = self._selectors()
            last = self._last   # the previous window's end is often this one's start
            a = last if last is not None and last.time == start else \
                self.server.snapshot(start, sel)
            b = self.server.snapshot(end, sel)
        else:
            assert self.agents is not None
            a, b = self._last, self.agents.snapshot()
        self._last = b
        self._fresh = sorted(set(b.sources) - set(a.sources)) if a is not None else []
        if a is not None:
            a = align(a, b)
        return a, b

    def window(self, start: float, end: float) -> AppWindow:
        a, b = self._snapshots(start, end)
        if not any(n.startswith(P) for n in b.families):
            raise ServeMetricsError(
                f"no Ray Serve metric (ray_serve_*) at {', '.join(b.sources)}: is Serve "
                f"running on this cluster, and application {self.app!r} deployed? (missing: "
                f"{', '.join('ray_' + f for f in STAGE_FAMILIES)})")
        partial = [f"agent {addr} unreachable: {why}" for addr, why in b.failed.items()]
        if a is not None and self._fresh:
            partial.append(f"agent(s) {', '.join(self._fresh)}: first scrape (new node, or "
                           "back after a failure): their counts start at this scrape")
        if a is None:
            partial.append("first window: no earlier scrape to difference against "
                           "(counts are 0; the next window starts at this scrape)")
        span = max(b.time - a.time, 1e-9) if a is not None else max(end - start, 1e-9)
        app_match: Match = {"application": self.app}
        if not any(b.series("ray_" + f, app_match) for f in STAGE_FAMILIES):
            partial.append(f"application {self.app!r}: no Serve series yet (is it deployed "
                           "under that name?)")
        stages = {s: self._stage(s, a, b, span, partial) for s in self.stages}
        self.usage = {s: self._usage(s, b) for s in self.stages}
        return self._app(stages, a, b, start, end, span, partial)

    # -- per stage --------------------------------------------------------------------------
    def _stage(self, name: str, a: Snapshot | None, b: Snapshot, span: float,
               partial: list[str]) -> StageWindow:
        m: Match = {"application": self.app, "deployment": name}
        replicas = _replicas(b, m)
        if replicas == 0 and not b.has(P + "replica_processing_queries", m):
            partial.append(f"stage {name}: no samples yet (no replica has reported)")

        def inc(family: str) -> int:
            if a is None:
                return 0
            return int(round(counter_delta(a.series(P + family, m), b.series(P + family, m))))

        arrivals = inc("num_router_requests_total")
        completions = inc("deployment_request_counter_total")
        errors = inc("deployment_error_counter_total")
        lat = Histogram.delta(a, b, P + "deployment_processing_latency_ms", m)
        queue = int(round(b.total(P + "deployment_queued_queries", m)))
        ongoing = int(round(b.total(P + "replica_processing_queries", m)))
        wait = Histogram.delta(a, b, P + "request_router_fulfillment_time_ms", m)
        if wait.count > 0:
            queue_delay = wait.mean
        elif arrivals > 0:
            queue_delay = 1000.0 * queue / (arrivals / span)   # Little's law
        else:
            queue_delay = 0.0 if queue == 0 and a is not None else NAN
        util = self._util(name, a, b, m, lat, replicas, span)
        gpu = _gpu_util(b) if name in self.gpu_stages else None
        return StageWindow(
            name=name, replicas=replicas, arrivals=arrivals, completions=completions,
            errors=errors, p50_ms=lat.quantile(0.5), p99_ms=lat.quantile(0.99),
            queue_delay_ms=queue_delay, queue=queue, ongoing=ongoing, util=util,
            throughput_rps=completions / span if a is not None else 0.0, gpu_util=gpu)

    def _util(self, name: str, a: Snapshot | None, b: Snapshot, m: Match, lat: Histogram,
              replicas: int, span: float) -> float:
        gauge = b.series(P + "replica_utilization_percent", m)
        if self.util_from == "serve_gauge" and gauge:
            return sum(gauge.values()) / len(gauge) / 100.0
        if a is None or replicas <= 0:
            return NAN
        capacity_ms = 1000.0 * span * replicas * max(self._max_ongoing.get(name, 1), 1)
        return lat.sum / capacity_ms

    def _usage(self, name: str, b: Snapshot) -> StageUsage:
        comp = f"ray::ServeReplica:{self.app}:{name}"
        m: Match = {"Component": lambda c: c == comp or c.startswith(comp + ".")}
        cpu = b.series("ray_component_cpu_percentage", m)
        rss = b.series("ray_component_rss_mb", m)
        return StageUsage(sum(cpu.values()), sum(rss.values()), len(cpu))

    # -- the application --------------------------------------------------------------------
    def _app(self, stages: dict[str, StageWindow], a: Snapshot | None, b: Snapshot,
             start: float, end: float, span: float, partial: list[str]) -> AppWindow:
        ing = stages[self.ingress]
        am: Match = {"application": self.app}
        ok: Match = {"application": self.app, "status_code": _is_ok}
        total = errors = 0.0
        lat = Histogram()
        for proto in ("http", "grpc"):
            if a is not None:
                total += counter_delta(a.series(f"{P}num_{proto}_requests_total", am),
                                       b.series(f"{P}num_{proto}_requests_total", am))
                errors += counter_delta(a.series(f"{P}num_{proto}_error_requests_total", am),
                                        b.series(f"{P}num_{proto}_error_requests_total", am))
            h = Histogram.delta(a, b, f"{P}{proto}_request_latency_ms", ok)
            if h.count > (lat.count if lat.buckets else -1):
                lat = h   # the protocol that carried the traffic
        if total > 0:
            completions, n_err = int(round(total - errors)), int(round(errors))
        else:   # no proxy traffic: the ingress deployment stands in
            completions, n_err = ing.completions, ing.errors
            lat = Histogram.delta(a, b, P + "deployment_processing_latency_ms",
                                  {"application": self.app, "deployment": self.ingress})
        return AppWindow(
            app=self.app, start=start, end=end, stages=stages, arrivals=ing.arrivals,
            arrival_rate=ing.arrivals / span if a is not None else 0.0,
            completions=completions, errors=n_err, p50_ms=lat.quantile(0.5),
            p95_ms=lat.quantile(0.95), p99_ms=lat.quantile(0.99),
            in_flight=ing.queue + ing.ongoing, drops=0, partial=tuple(partial),
            p99_bucket_ms=lat.bucket_of(0.99))

    def close(self) -> None:
        if self.agents is not None:
            self.agents.close()


def serve_metrics_source(app: str, stages: Sequence[str], ingress: str | None = None, *,
                         prometheus_url: str | None = None, **kwargs: object) -> ServeMetrics:
    """The factory the backend and the operator use: Serve's own metrics for `app`, read
    from every node's metrics agent (default) or from the Prometheus server at
    `prometheus_url`. `kwargs` go to `ServeMetrics` (agents, timeout_s, max_ongoing,
    util_from, gpu_stages)."""
    return ServeMetrics(app, stages, ingress, prometheus_url=prometheus_url,
                        **kwargs)  # type: ignore[arg-type]


# -- helpers -----------------------------------------------------------------------------------
def _replicas(b: Snapshot, m: Match) -> int:
    """Healthy replicas: the controller's per-replica 1/0 gauge (or, without a `replica`
    label, its count); failing that, the replicas exporting their processing gauge."""
    healthy = b.series(P + "deployment_replica_healthy", m)
    if healthy:
        return int(round(sum(v for v in healthy.values() if math.isfinite(v))))
    return len({dict(k).get("replica", "") for k in
                b.series(P + "replica_processing_queries", m)})


def _is_ok(code: str) -> bool:
    return not (code.startswith("4") or code.startswith("5"))


def _gpu_util(b: Snapshot) -> float | None:
    for name in ("DCGM_FI_DEV_GPU_UTIL", "ray_node_gpus_utilization"):
        vals = [v for v in b.series(name).values() if math.isfinite(v)]
        if vals:
            return sum(vals) / len(vals) / 100.0
    return None


def _promql_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _promql_re(s: str) -> str:
    import re

    return _promql_str(re.escape(s))

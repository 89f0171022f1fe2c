"""Live per-stage metrics of a Ray Serve pipeline: instrumentation inside every replica,
aggregation in one named Ray actor per application, windowed queries for the controller.

`MetricsClient` is a `sair_ray.backends.metrics.MetricsSource`: its windows are the port's
`AppWindow` / `StageWindow`. What each number means here (docs/serve_apps.md says where
each comes from):

    from sair_ray.observe import MetricsClient, MetricsUnavailable
    client = MetricsClient("image_classification")   # needs a connected Ray driver;
                                                     # raises MetricsUnavailable if absent
    w = client.window(start, end)                    # wall-clock time.time() seconds
    w.stages["preprocess"].p99_ms

`AppWindow` (frozen dataclass, `to_dict()` for JSON):
    app, start, end                 the window asked for
    stages: dict[str, StageWindow]  one entry per stage that has ever reported, keyed by
                                    the Serve deployment name (= the profile's stage name)
    arrivals                        requests that reached the ingress in the window
    arrival_rate                    arrivals / (end - start), req/s
    completions, errors             ingress requests finished in the window (ok / failed)
    p50_ms, p95_ms, p99_ms          end-to-end latency at the ingress (arrival -> response)
                                    of the ok requests finished in the window; NaN if none
    in_flight                       ingress requests accepted but not answered at `end`
    drops                           0 (Serve's own refusals are not counted)

`StageWindow` (frozen dataclass), per stage:
    replicas                        replicas that reported in the last 3 s before `end`
    arrivals                        requests that reached the stage's replicas in the window
    completions, errors             requests finished in the window, ok / raised
    p50_ms, p99_ms                  processing time (slot acquired -> handler done) of the ok
                                    requests finished in the window; NaN if none
    queue_delay_ms                  mean time those requests waited for a processing slot
                                    inside the replica; NaN if none
    queue                           requests waiting for a slot at `end` (sum over replicas)
    ongoing                         requests holding a slot at `end` (sum over replicas)
    util                            CPU-seconds used / allocated-core-seconds over the window
                                    (process CPU time from psutil; cores = the replica's Ray
                                    CPU allocation); NaN if no sample
    throughput_rps                  completions / (end - start)
    gpu_util                        shim-reported GPU active time / wall time, or None when
                                    the stage has no cuda_tb shim loaded

Arrival counts come from per-replica cumulative counters sampled every `flush_interval_s`
(default 1 s), so window edges are resolved to about one flush interval. Names:
actor `sair-metrics:<app>` in Ray namespace `sair`, detached, created by the first replica
of the app (`ensure_aggregator`); `drop_aggregator(app)` removes it.
"""

from sair_ray.backends.metrics import AppWindow, StageWindow
from sair_ray.observe.client import (
    METRICS_NAMESPACE,
    MetricsClient,
    MetricsUnavailable,
    actor_name,
    drop_aggregator,
    ensure_aggregator,
)
from sair_ray.observe.meter import INGRESS, StageMeter
from sair_ray.observe.store import MetricsStore

__all__ = [
    "INGRESS",
    "METRICS_NAMESPACE",
    "AppWindow",
    "MetricsClient",
    "MetricsStore",
    "MetricsUnavailable",
    "StageMeter",
    "StageWindow",
    "actor_name",
    "drop_aggregator",
    "ensure_aggregator",
]

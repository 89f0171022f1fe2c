"""The per-app aggregator actor (`sair-metrics:<app>`, namespace `sair`) and its client.

Ray is imported inside the functions: `sair_ray.observe` stays importable without the
`apps` extra (the store and the meter are plain Python).
"""

from __future__ import annotations

import logging
from typing import Any

from sair_ray.backends.metrics import AppWindow
from sair_ray.observe.store import MetricsStore, ReplicaReport

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "sair"


class MetricsUnavailable(RuntimeError):
    """No aggregator actor for the app (not deployed with instrumentation, or Ray not up)."""


def actor_name(app: str) -> str:
    return f"sair-metrics:{app}"


class MetricsAggregator:
    """Actor body: a `MetricsStore` behind `push` and `window`."""

    def __init__(self, app: str, store_options: dict[str, Any] | None = None) -> None:
        self.store = MetricsStore(app, **(store_options or {}))

    def push(self, reports: list[ReplicaReport]) -> int:
        self.store.push(reports)
        return len(reports)

    def window(self, start: float, end: float) -> AppWindow:
        return self.store.window(start, end)

    def info(self) -> dict[str, Any]:
        return {"app": self.store.app, "stages": self.store.stage_names,
                "records": self.store.record_count(), "reports": self.store.reports}


def ensure_aggregator(app: str, store_options: dict[str, Any] | None = None) -> Any:
    """The app's aggregator actor, created (detached, no CPU) if it does not exist yet."""
    import ray

    remote_cls = ray.remote(num_cpus=0, max_restarts=-1)(MetricsAggregator)
    return remote_cls.options(name=actor_name(app), namespace=METRICS_NAMESPACE,
                              lifetime="detached", get_if_exists=True).remote(app,
                                                                              store_options)


def drop_aggregator(app: str) -> bool:
    """Kill the app's aggregator actor; False if there was none."""
    import ray

    try:
        actor = ray.get_actor(actor_name(app), namespace=METRICS_NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True


class MetricsClient:
    """Read side for the controller / live backend. Needs `ray.init(...)` done first."""

    def __init__(self, app: str, *, timeout_s: float = 10.0) -> None:
        import ray

        if not ray.is_initialized():
            raise MetricsUnavailable(
                f"cannot read metrics of app {app!r}: this process is not connected to Ray "
                "(call ray.init(address='auto') first)")
        try:
            # Any: ray types the methods of a handle it got by name as Never
            self._actor: Any = ray.get_actor(actor_name(app), namespace=METRICS_NAMESPACE)
        except ValueError:
            raise MetricsUnavailable(
                f"no metrics actor {actor_name(app)!r} in Ray namespace "
                f"{METRICS_NAMESPACE!r}: app {app!r} is not running, or its deployments do "
                "not use sair_ray.observe.StageMeter (see docs/serve_apps.md)") from None
        self.app = app
        self.timeout_s = timeout_s

    def window(self, start: float, end: float) -> AppWindow:
        """Metrics over [start, end), wall-clock seconds."""
        import ray

        if not end > start:
            raise ValueError(f"window needs start < end, got [{start}, {end})")
        return ray.get(self._actor.window.remote(start, end), timeout=self.timeout_s)

    def info(self) -> dict[str, Any]:
        import ray

        return ray.get(self._actor.info.remote(), timeout=self.timeout_s)

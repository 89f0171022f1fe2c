"""Concurrent CPU redeploys on real Ray Serve: three apps' controllers (each its own Ray
actor process, as on a cluster with one SAIR controller per app) change their app's CPU
at the same instant. A CPU change is a PUT of Serve's whole declarative config, so two
writes built from the same read would undo each other; `RayServeBackend` serialises them
with the cluster lock (sair_ray/cluster_lock.py, Ray's internal KV) and builds each from
a read taken under the lock. Every app must end with its own change and the others' kept.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.live.helpers import REPO, wait_running
from tests.ray_harness import free_port, private_ray

pytest.importorskip("ray.serve")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPS = ("r0", "r1", "r2")
PROFILE = REPO / "tests" / "live" / "fixtures" / "tiny_pipeline.yaml"


def _config(port: int) -> dict[str, Any]:
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": a, "route_prefix": f"/{a}", "external_scaler_enabled": True,
            "import_path": "tests.live.fixtures.tiny_pipeline:app",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
            "deployments": [{"name": d} for d in ("Ingress", "pre", "post")]}
            for a in APPS]}


class _Controller:
    """One app's backend in its own process, applying a CPU step when told."""

    def __init__(self, app: str, dashboard: str) -> None:
        from sair_ray.backends.metrics import AppWindow
        from sair_ray.backends.ray_serve import RayServeBackend, ServeAdmin

        class NoMetrics:
            def window(self, start: float, end: float) -> AppWindow:
                return AppWindow(app, start, end)

        self.b = RayServeBackend(app, profile=str(PROFILE),
                                 admin=ServeAdmin(dashboard, timeout_s=120),
                                 metrics=NoMetrics())
        self.alloc = self.b.observe(0.0, 30.0).allocation["pre"]

    def apply_at(self, t: float) -> dict[str, Any]:
        time.sleep(max(0.0, t - time.time()))
        t0 = time.time()
        a = self.alloc
        self.b.apply({"pre": type(a)(a.replicas, a.cpu_m + 250, a.mem_mb)}, 30.0)
        return {"started": t0, "took_s": time.time() - t0,
                "errors": [e.error for e in self.b.actuation_errors]}


@pytest.mark.timeout(360)
def test_simultaneous_cpu_redeploys_of_three_apps_all_land() -> None:
    import ray

    from sair_ray.backends.ray_serve import ServeAdmin

    with private_ray(4, dashboard=True) as cluster:
        admin = ServeAdmin(cluster.dashboard, timeout_s=120)
        admin.deploy(_config(free_port()))
        for a in APPS:
            wait_running(admin, a, timeout_s=240)
        ctls = [ray.remote(_Controller).options(num_cpus=0).remote(a, cluster.dashboard)
                for a in APPS]
        start = time.time() + 5
        got = ray.get([c.apply_at.remote(start) for c in ctls], timeout=240)
        assert all(g["errors"] == [] for g in got), got
        assert max(g["started"] for g in got) - start < 2.0, got   # really at once
        # every app's own change is in the deployed config, none undone by another's write
        details = admin.details()["applications"]
        for a in APPS:
            pre = next(d for d in details[a]["deployed_app_config"]["deployments"]
                       if d["name"] == "pre")
            # (without the lock one app's change is undone: its entry loses the options)
            assert pre.get("ray_actor_options", {}).get("num_cpus") == 0.5, (a, pre)
        for a in APPS:   # and Serve rolls the replicas to it
            wait_running(admin, a, timeout_s=240)
            deps = admin.details()["applications"][a]["deployments"]
            opts = deps["pre"]["deployment_config"]["ray_actor_options"]
            assert opts["num_cpus"] == 0.5, (a, opts)
        print("apply took (s):", sorted(round(g["took_s"], 2) for g in got))

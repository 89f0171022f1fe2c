"""GPU rate control across nodes, on a real two-node Ray cluster (both nodes on this
machine, each its own raylet): the controller's process is on the head, the GPU replicas
(with the real compiled cuda_tb shim preloaded; emulated compute, no GPU) are on the
worker node, the only one with GPUs. Their shim sockets are reached through the relay
actor on the worker node (sair_ray/backends/gpu_rate.py): the rate is read from every
replica, set on every replica, a replica that drifted (as after a restart at rate 1) is
set back, and a socket whose pid is not the replica asked for is refused."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from tests.live.helpers import REPO, wait_running
from tests.ray_harness import free_port, private_ray

pytest.importorskip("ray.serve")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "gpuapp"


def _config(socket_dir: str) -> dict:
    import cuda_tb

    env = cuda_tb.runtime_env(socket_dir)["env_vars"]
    return {
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{
            "name": APP, "route_prefix": f"/{APP}", "external_scaler_enabled": True,
            "import_path": "tests.live.fixtures.gpu_stage:app",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
            "deployments": [
                {"name": "Ingress"},
                {"name": "gpu", "num_replicas": 2,
                 "ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.5,
                                       "runtime_env": {"env_vars": {
                                           "PYTHONPATH": str(REPO), **env}}}}]}]}


@pytest.mark.timeout(240)
def test_rates_reach_replicas_on_another_node_through_the_relay() -> None:
    import ray

    from cuda_tb import ShimClient
    from sair_ray.backends.gpu_rate import replica_marker, shim_requests
    from sair_ray.backends.metrics import AppWindow
    from sair_ray.backends.ray_serve import RayServeBackend, ServeAdmin
    from sair_ray.config import PipelineConfig

    class NoMetrics:
        def window(self, start: float, end: float) -> AppWindow:
            return AppWindow(APP, start, end)

    socket_dir = tempfile.mkdtemp(prefix="sg", dir="/tmp")
    with private_ray(2, dashboard=True) as cluster:
        worker = cluster.cluster.add_node(num_cpus=2, num_gpus=1)  # type: ignore[attr-defined]
        cluster.cluster.wait_for_nodes()  # type: ignore[attr-defined]
        admin = ServeAdmin(cluster.dashboard, timeout_s=120)
        admin.deploy(_config(socket_dir))
        wait_running(admin, APP)
        b = RayServeBackend(APP, options=PipelineConfig(sla_ms=500), admin=admin,
                            metrics=NoMetrics())
        here = ray.get_runtime_context().get_node_id()
        view = b._view(0.0)
        shims = view.deployments["gpu"].shims
        assert len(shims) == 2 and {s.node_id for s in shims} == {worker.node_id} != {here}
        for s in shims:   # the shims are up (their sockets appear after the constructor)
            deadline = time.time() + 30
            while not Path(s.socket).exists():
                assert time.time() < deadline, f"no shim socket {s.socket}"
                time.sleep(0.2)

        ctx = b.observe(0.0, 30.0)
        assert b.pipeline.stage("gpu").is_gpu and ctx.stage("gpu").rate == 1.0
        assert b.gpu.relayed == 2          # both read through the worker node's relay
        relay = ray.get_actor(f"sair-shim-relay:{worker.node_id}", namespace="sair")
        assert ray.get(relay.node.remote()) == worker.node_id

        alloc = ctx.allocation["gpu"]
        b.apply({"gpu": type(alloc)(alloc.replicas, alloc.cpu_m, alloc.mem_mb, 0.5)}, 60.0)
        assert not b.actuation_errors, list(b.actuation_errors)
        assert [ShimClient(s.socket).get_rate() for s in shims] == [0.5, 0.5]

        # one replica back at 1.0 (as a restarted one comes up): set back next round
        ShimClient(shims[0].socket).set_rate(1.0)
        assert b.observe(60.0, 90.0).stage("gpu").rate == 0.5
        assert [ShimClient(s.socket).get_rate() for s in shims] == [0.5, 0.5]
        drift = [c for c in b.external_changes if c.field == "rate"]
        assert len(drift) == 1 and drift[0].restored and drift[0].replica == shims[0].replica
        assert drift[0].observed == 1.0 and drift[0].expected == 0.5

        # a socket whose pid is not a replica of this deployment is never touched
        other = shim_requests([{"socket": shims[0].socket, "pid": shims[0].pid, "op": "set",
                                "rate": 0.1, "marker": replica_marker(APP, "Ingress")}])
        assert "not a replica" in other[0]["error"]
        assert ShimClient(shims[0].socket).get_rate() == 0.5

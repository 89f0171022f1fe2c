"""A user's own Serve app, managed end to end with no sair-ray code in it, on real Ray.

The app is tests/live/fixtures/plain_pipeline.py (Ingress -> prep -> infer, `infer` slow,
emulated compute: an asyncio sleep). SAIR knows nothing about it beforehand: no profile;
its stages come from Serve's deployment graph, its SLA from the config, its metrics from
Ray Serve's own Prometheus metrics read from the node's metrics agent
(`pipeline.metrics: serve`). Under load on `infer`, SAIR must scale `infer` within 3 rounds
and every request must be answered, in both modes:

- external scaler: `external_scaler_enabled: true` and `sair_ray.live.attach`;
- Serve-native: `autoscaling_policy: sair_ray.serve:SAIRPolicy` with `sla_ms` in its
  policy_kwargs, which is all it takes (the policy starts the controller). Then the
  controller is killed mid-load: Serve keeps scaling the app on its fallback, and when a
  controller is attached again SAIR resumes control.

The controller runs the rule policy (`sair-retrieval`): what is under test is the control
plane, not the LLM (tests/policy covers that).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.live.helpers import REPO, drive, wait_running
from tests.ray_harness import free_port, private_ray

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "myapp"
INTERVAL = 3.0
SLA_MS = 600.0
# Fast rounds for a test; cooldowns that never stop a second step up, and no scale-down
# during the test (the load is on and off).
CFG: dict[str, Any] = {
    "loop": {"decision_interval_s": INTERVAL},
    "exploration": {"epsilon_0": 0.0, "epsilon_min": 0.0},
    "validator": {"cooldown_up_s": 0, "cooldown_down_s": 600, "replicas_max": 4},
    "pipeline": {"metrics": "serve"},
}
FAST = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}
# Serve applies a deployment's autoscaling delays to any policy's answer (native mode)
AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
               "upscale_delay_s": 0, "downscale_delay_s": 600, "metrics_interval_s": 0.5,
               "look_back_period_s": 2}
DEPLOYMENTS = ("Ingress", "prep", "infer")


def app_config(port: int, *, native: bool) -> dict[str, Any]:
    deps: list[dict[str, Any]] = []
    for name in DEPLOYMENTS:
        d: dict[str, Any] = {"name": name}
        if name == "infer":
            d["max_ongoing_requests"] = 1
        if native:
            d["autoscaling_config"] = AUTOSCALING
        deps.append(d)
    app: dict[str, Any] = {
        "name": APP, "route_prefix": f"/{APP}",
        "import_path": "tests.live.fixtures.plain_pipeline:app",
        "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO), **FAST}},
        "deployments": deps}
    if native:
        app["autoscaling_policy"] = {
            "policy_function": "sair_ray.serve:SAIRPolicy",
            "policy_kwargs": {"sla_ms": SLA_MS, "policy": "sair-retrieval", "config": CFG,
                              "poll_s": 0.5}}
    else:
        app["external_scaler_enabled"] = True
    return {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}


@contextlib.contextmanager
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, *, native: bool
           ) -> Iterator[tuple[Any, str]]:
    from sair_ray.backends.ray_serve import ServeAdmin

    # the controller actor (started by Serve's controller in native mode) inherits this
    monkeypatch.setenv("SAIR_DATA_DIR", str(tmp_path))
    port = free_port()
    with private_ray(4, dashboard=True,
                     _system_config={"metrics_report_interval_ms": 1000}) as cluster:
        admin = ServeAdmin(cluster.dashboard, timeout_s=120)
        admin.deploy(app_config(port, native=native))
        wait_running(admin, APP)
        try:
            yield admin, f"http://127.0.0.1:{port}/{APP}?x=1"
        finally:
            from sair_ray.live import detach

            with contextlib.suppress(Exception):
                detach(APP)


def targets(admin: Any) -> dict[str, int]:
    deps = admin.details()["applications"][APP]["deployments"]
    return {n: d["target_num_replicas"] for n, d in deps.items()}


def until(cond: Callable[[], Any], timeout_s: float, what: Callable[[], str] | str) -> Any:
    deadline = time.time() + timeout_s
    while True:
        with contextlib.suppress(Exception):  # a slow dashboard or KV read: next sample
            got = cond()
            if got:
                return got
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: "
                                 f"{what() if callable(what) else what}")
        time.sleep(0.25)


class Load:
    """Open-loop Poisson load in the background (every request accounted for)."""

    def __init__(self, url: str, rate: float, duration_s: float) -> None:
        self.result: Any = None
        self.started = time.time()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(url, rate, duration_s),
                                   daemon=True)
        self._t.start()

    def _run(self, url: str, rate: float, duration_s: float) -> None:
        self.result = drive(url, rate=rate, duration_s=duration_s, seed=7, stop=self._stop)

    def join(self, stop: bool = False) -> Any:
        """Wait for every answer; `stop`: send nothing more first (the checks are done)."""
        if stop:
            self._stop.set()
        self._t.join(300)
        assert self.result is not None, "the load driver did not finish"
        return self.result


def _assert_nothing_lost(res: Any) -> None:
    assert res.failures == [] and res.http_errors == {}, (res.failures[:3], res.http_errors)
    assert res.ok == res.sent


@pytest.mark.timeout(300)
def test_external_scaler_mode_scales_the_slow_deployment(monkeypatch, tmp_path) -> None:
    from sair_ray.live import attach

    with served(monkeypatch, tmp_path, native=False) as (admin, url):
        handle = attach(APP, {**CFG, "pipeline": {**CFG["pipeline"], "sla_ms": SLA_MS}},
                        "sair-retrieval", data_dir=tmp_path)
        first = until(lambda: handle.decisions(1), 30 + 2 * INTERVAL,
                      "the controller's first round")
        # the stages were read from Serve's deployment graph: ingress first, then its
        # callees (by name: Serve records them as a set)
        assert list(first[-1]["stages"]) == ["Ingress", "infer", "prep"], first
        # 8 req/s of 250 ms on a one-at-a-time deployment: about 2 replicas' worth
        load = Load(url, rate=8, duration_s=5 * INTERVAL + 10)
        until(lambda: targets(admin)["infer"] >= 2, 3 * INTERVAL + 10,
              lambda: f"SAIR scales infer within 3 rounds: {targets(admin)}, "
                      f"{handle.decisions(3)}")
        _assert_nothing_lost(load.join(stop=True))
        ups = [d for d in handle.decisions(0)
               if d["action"].get("infer", {}).get("replicas", 0) > 0]
        assert ups, "the scale-up is SAIR's (in its decision log)"


@pytest.mark.timeout(420)
def test_serve_native_mode_falls_back_when_sair_dies_and_resumes(monkeypatch,
                                                                   tmp_path) -> None:
    import ray

    from sair_ray.live import attach, get_handle
    from sair_ray.live.actor import NAMESPACE, actor_name
    from sair_ray.serve import SAIR, STALE, read_modes

    with served(monkeypatch, tmp_path, native=True) as (admin, url):
        # The policy's one config entry started the controller.
        handle = until(lambda: get_handle(APP), 60, "SAIRPolicy starts the controller")
        until(lambda: set((read_modes(APP) or {}).get("modes", {}).values()) == {SAIR},
              30 + 3 * INTERVAL, lambda: f"Serve follows SAIR's plan: {read_modes(APP)}")
        load = Load(url, rate=8, duration_s=14 * INTERVAL + 20)
        until(lambda: targets(admin)["infer"] >= 2, 3 * INTERVAL + 10,
              lambda: f"SAIR scales infer within 3 rounds: {targets(admin)}, "
                      f"{handle.decisions(3)}, {read_modes(APP)}")
        assert read_modes(APP)["modes"]["infer"] == SAIR
        # Kill the controller for good (no restart): within 2 rounds the plan is stale and
        # Serve's own policy sizes the app under the same load.
        ray.kill(ray.get_actor(actor_name(APP), namespace=NAMESPACE), no_restart=True)
        until(lambda: read_modes(APP)["modes"]["infer"] == STALE, 2 * INTERVAL + 10,
              lambda: f"fallback after the controller died: {read_modes(APP)}")
        until(lambda: targets(admin)["infer"] >= 2, 15,
              lambda: f"Serve keeps scaling infer on its fallback: {targets(admin)}")
        # A controller attached again resumes control.
        attach(APP, {**CFG, "pipeline": {**CFG["pipeline"], "sla_ms": SLA_MS}},
               "sair-retrieval", data_dir=tmp_path)
        until(lambda: read_modes(APP)["modes"]["infer"] == SAIR, 3 * INTERVAL + 15,
              lambda: f"SAIR resumes: {read_modes(APP)}")
        _assert_nothing_lost(load.join(stop=True))

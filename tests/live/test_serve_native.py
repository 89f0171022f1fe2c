"""Serve-native mode on real Ray: a plain app (tests/live/fixtures/plain_app.py) deployed
with `autoscaling_policy: sair_ray.serve:SAIRPolicy`. Without a SAIR plan Serve scales it
on its default policy; with a published plan Serve follows the plan; when the plan goes
stale Serve's default takes over again. The plan is published from the test (what the
controller's `LiveLoop.round` does every round), so no controller runs here."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from tests.live.helpers import HTTP_PORT, REPO, drive, wait_running
from tests.ray_harness import private_ray

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "plain"
URL = f"http://127.0.0.1:{HTTP_PORT}/{APP}?x=1"
# Serve applies each deployment's delays to any policy's answer; short ones keep this quick
AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
               "upscale_delay_s": 0, "downscale_delay_s": 1, "metrics_interval_s": 0.5,
               "look_back_period_s": 1}
FAST_METRICS = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}


def plain_config() -> dict:
    return {
        "http_options": {"host": "127.0.0.1", "port": HTTP_PORT},
        "applications": [{
            "name": APP, "route_prefix": f"/{APP}",
            "import_path": "tests.live.fixtures.plain_app:app",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO), **FAST_METRICS}},
            "autoscaling_policy": {
                "policy_function": "sair_ray.serve:SAIRPolicy",
                "policy_kwargs": {"start_controller": False, "poll_s": 0.2}},
            "deployments": [{"name": d, "autoscaling_config": AUTOSCALING}
                            for d in ("Ingress", "work")]}]}


def _targets(admin) -> dict[str, int]:
    deps = admin.details()["applications"][APP]["deployments"]
    return {n: d["target_num_replicas"] for n, d in deps.items()}


def _until(cond, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.25)


@pytest.mark.timeout(180)
def test_serve_follows_a_fresh_plan_and_falls_back_without_one() -> None:
    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.serve import MISSING, SAIR, STALE, Plan, publish_plan, read_modes

    with private_ray(4, dashboard=True) as cluster:
        admin = ServeAdmin(cluster.dashboard, timeout_s=120)
        admin.deploy(plain_config())
        wait_running(admin, APP)
        # 1. No plan: Serve's default policy scales `work` under load (8 req/s of 200 ms
        # requests, target 1 ongoing per replica: about 2 replicas' worth), and says so.
        # The peak is sampled during the load: with a 1 s downscale delay the target may be
        # back at 1 by the time the last answer arrives.
        peak, done = {"work": 0}, threading.Event()

        def watch() -> None:
            while not done.is_set():
                with contextlib.suppress(Exception):  # a slow dashboard read: next sample
                    peak["work"] = max(peak["work"], _targets(admin)["work"])
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            res = drive(URL, rate=8, duration_s=8, seed=3)
        finally:
            done.set()
            watcher.join(10)
        assert res.failures == [] and res.ok == res.sent
        assert peak["work"] >= 2, (peak, _targets(admin))
        modes = _until(lambda: read_modes(APP), 5, "the policy reports its modes")
        assert modes["modes"] == {"Ingress": MISSING, "work": MISSING}
        # 2. A fresh plan (idle app: the default would go back to 1): Serve follows it,
        # clamped to max_replicas.
        interval = 3.0
        publish_plan(Plan(APP, 1, time.time(), interval, {"work": 3, "Ingress": 9}))
        _until(lambda: _targets(admin) == {"work": 3, "Ingress": 4}, 10,
               f"Serve follows the plan ({_targets(admin)})")
        _until(lambda: (read_modes(APP) or {}).get("modes") == {"Ingress": SAIR,
                                                                 "work": SAIR}, 5,
               "modes say sair")
        # 3. No new plan for 2 rounds: stale, Serve's default takes the idle app back down.
        _until(lambda: _targets(admin) == {"work": 1, "Ingress": 1}, 2 * interval + 10,
               f"fallback after the plan went stale ({_targets(admin)})")
        _until(lambda: (read_modes(APP) or {}).get("modes") == {"Ingress": STALE,
                                                                 "work": STALE}, 5,
               "modes say stale")

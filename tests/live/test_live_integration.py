"""SAIR on a real Ray Serve app: a private Ray cluster with the dashboard, the two-stage
fixture pipeline deployed with `external_scaler_enabled`, HTTP load that overloads its
`pre` stage, and the controller as a detached actor (threshold policy, for CI speed).

The tests share one cluster and run in order: attach + scale under load, adoption of a
user's redeploy, survival of the driver, resume after a crash, stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.live.helpers import HTTP_PORT, drive, tiny_config, wait_running
from tests.ray_harness import private_ray

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

# One scenario in steps that build on each other: shuffled with the other modules, never
# within this one (`make test-random`).
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.random_order(disabled=True)]

APP = "tiny_pipeline"
PROFILE = str(Path(__file__).parent / "fixtures" / "tiny_pipeline.yaml")
INTERVAL = 4.0
CFG = {"loop": {"decision_interval_s": INTERVAL, "settle_s": 1},
       "validator": {"cooldown_up_s": 4, "cooldown_down_s": 600}}
URL = f"http://127.0.0.1:{HTTP_PORT}/{APP}?x=1"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from sair_ray.backends.ray_serve import ServeAdmin

    with private_ray(4, dashboard=True) as cluster:
        admin = ServeAdmin(cluster.dashboard, timeout_s=180)  # starts Serve
        admin.deploy(tiny_config())
        wait_running(admin, APP)
        yield {"cluster": cluster, "admin": admin,
               "data": tmp_path_factory.mktemp("sair-data")}


def _target(admin, dep: str) -> int:
    return admin.details()["applications"][APP]["deployments"][dep]["target_num_replicas"]


@pytest.mark.timeout(240)
def test_attach_refuses_unknown_app(live) -> None:
    from sair_ray.backends.ray_serve import ServeSetupError
    from sair_ray.live import attach

    with pytest.raises(ServeSetupError, match=r"no Serve application named 'nope'.*"
                                              r"tiny_pipeline"):
        attach("nope", CFG, "threshold", profile=PROFILE, data_dir=live["data"])


@pytest.mark.timeout(240)
def test_overloaded_stage_is_scaled_and_no_request_is_lost(live) -> None:
    from sair_ray.live import attach

    admin = live["admin"]
    handle = attach(APP, CFG, "threshold", profile=PROFILE, data_dir=live["data"])
    live["handle"] = handle
    assert handle.status()["policy"] == "threshold"
    # pre serves 10 req/s per replica (100 ms, one at a time); 16 req/s overloads it
    t_load = time.time()
    res = drive(URL, rate=16, duration_s=36, seed=1)
    # no request lost: every one got an HTTP answer, and all of them were OK
    assert res.failures == [] and res.answered == res.sent and res.ok == res.sent > 400
    assert _target(admin, "pre") >= 2 and _target(admin, "post") == 1
    decisions = handle.decisions(last=100)
    scale_ups = [d for d in decisions if d["action"].get("pre", {}).get("replicas", 0) > 0]
    assert scale_ups, decisions
    # the bottleneck stage is scaled within 2 decision rounds of the overload
    assert scale_ups[0]["time"] - t_load <= 2 * INTERVAL + 1.0
    assert all("post" not in d["action"] or d["action"]["post"].get("replicas", 0) <= 0
               for d in decisions)
    # once scaled, the queue drains: requests sent in the last 8 s finish under the SLA
    tail = [lat for t, lat in res.latencies_s if t > t_load + 28]
    assert np.median(tail) < 0.5, np.percentile(tail, [50, 99])
    st = handle.status()
    assert st["rounds_ok"] >= 8 and st["actuation_errors"] == []


@pytest.mark.timeout(120)
def test_user_redeploy_is_adopted_not_fought(live) -> None:
    handle, admin = live["handle"], live["admin"]
    pre_now = _target(admin, "pre")
    # a user redeploys with 2 post replicas (their config keeps pre as SAIR left it)
    admin.deploy(tiny_config(replicas={"pre": pre_now, "post": 2}))
    deadline = time.time() + 4 * INTERVAL
    changes: list = []
    while time.time() < deadline and not changes:
        time.sleep(1)
        changes = [c for c in handle.status()["external_changes"]
                   if c["stage"] == "post" and c["field"] == "replicas"]
    assert changes and changes[0]["expected"] == 1 and changes[0]["observed"] == 2
    assert _target(admin, "post") == 2  # down-scaling cooldown: SAIR leaves it as adopted


@pytest.mark.timeout(120)
def test_controller_outlives_driver_and_resumes_after_crash(live) -> None:
    import ray

    from sair_ray.live import get_handle

    rounds = live["handle"].status()["rounds"]
    ray.shutdown()  # the driver that attached goes away
    time.sleep(2 * INTERVAL)
    ray.init(address=live["cluster"].address, log_to_driver=False, logging_level="ERROR")
    handle = get_handle(APP)
    assert handle is not None and handle.status()["rounds"] > rounds
    # crash the actor process: Ray re-creates it, and it resumes from state.json
    before = handle.status()["rounds"]
    ray.kill(handle.actor, no_restart=False)
    deadline = time.time() + 60
    st: dict = {}
    while time.time() < deadline:
        try:
            st = handle.status()
            if st.get("restored_round"):
                break
        except Exception:  # restarting
            pass
        time.sleep(1)
    assert st.get("restored_round", 0) >= before
    final = handle.stop()
    assert final["running"] is False
    assert get_handle(APP) is None


@pytest.mark.timeout(180)
def test_cli_attach_status_detach(live, tmp_path) -> None:
    import json
    import subprocess
    import sys

    addr = live["cluster"].address
    sair = [sys.executable, "-m", "sair_ray.cli"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*sair, *args, "--address", addr], capture_output=True,
                              text=True, timeout=120)

    r = run("attach", APP, "--policy", "static", "--profile", PROFILE, "--data-dir",
            str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "attached" in r.stdout and "policy static" in r.stdout
    r = run("status", APP, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"]["policy"] == "static"
    r = run("detach", APP)
    assert r.returncode == 0 and "detached" in r.stdout, r.stderr
    r = run("status", APP)
    assert r.returncode == 2 and "no SAIR controller" in r.stderr


@pytest.mark.timeout(120)
def test_ensure_attached_starts_one_controller_without_waiting(live, tmp_path,
                                                                monkeypatch) -> None:
    from sair_ray.live import ensure_attached, get_handle

    monkeypatch.setenv("SAIR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAIR_POLICY", "static")
    # what an ingress replica calls at start; twice, as two replicas would
    first = ensure_attached(APP, profile=PROFILE)
    second = ensure_attached(APP, profile=PROFILE)
    assert first is not None and second is not None
    deadline = time.time() + 60
    while (h := get_handle(APP)) is None and time.time() < deadline:
        time.sleep(1)
    assert h is not None
    st = h.status()
    assert st["policy"] == "static" and st["data_dir"].startswith(str(tmp_path))
    h.stop()
    assert get_handle(APP) is None

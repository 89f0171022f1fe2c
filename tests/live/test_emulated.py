"""Emulated compute (sair_ray/emulate.py, serve_apps/emulated.py): the pieces without Ray
(requests identical to the simulator's, time scaling, service times from the model, the
Serve config), then one small emulated app on a private Ray whose logical resources are a
tiny profile cluster: service times honoured, one request at a time per replica
(`max_ongoing_requests`), a replica left pending when the logical CPUs run out."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sair_ray.emulate import (
    TimeScaled,
    cluster_resources,
    emulation_env,
    request_plan,
    scale_profile,
    service_time_s,
)
from sair_ray.profiles import load_profile, profile_from_dict
from sair_ray.sim import Simulation
from sair_ray.types import StageKind
from sair_ray.workloads import Burst, Poisson


def _sim_requests(profile, workload, seed: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's own arrival blocks (its private generator, read directly)."""
    sim = Simulation(profile, workload, np.random.default_rng(seed))
    times, refs = [], []
    for _ in range(blocks):
        sim._next_block()
        times += sim._a_times
        refs += sim._a_refs
    return np.array(times), np.array(refs).reshape(len(times), -1)


@pytest.mark.parametrize("app", ["image_classification", "nlp_analysis", "text_generation"])
def test_request_plan_is_the_simulators(app: str) -> None:
    prof = load_profile(app)
    wl = Burst(5, 20, 30, 10)
    times, refs = _sim_requests(prof, wl, seed=3, blocks=4)
    rp = request_plan(prof, wl, 40.0, seed=3)
    assert len(rp) == len(times) > 0
    np.testing.assert_array_equal(rp.times, times)
    np.testing.assert_array_equal(rp.refs, refs)
    assert rp.stages == prof.pipeline.stage_names
    body = rp.body(2)
    assert body == {"id": 2, "refs": list(refs[2])}


def test_time_scaling() -> None:
    prof = load_profile("nlp_analysis")
    s = 4.0
    sp = scale_profile(prof, s, cold_start_scale=0.5)
    assert sp.pipeline.sla_ms == prof.pipeline.sla_ms * s
    for m, ms in zip(prof.models, sp.models, strict=True):
        assert ms.mean_ref_s() == pytest.approx(m.mean_ref_s() * s)
        assert ms.batch_overhead_ms == m.batch_overhead_ms * s
        assert ms.cold_start_s == m.cold_start_s * 0.5
        assert ms.batch_max == m.batch_max and ms.parallel_fraction == m.parallel_fraction
    assert sp.pipeline.stages == prof.pipeline.stages   # resources and limits unchanged
    assert scale_profile(prof, 1.0) is prof
    wl = TimeScaled(Poisson(20.0), s)
    assert wl.rate_at(3.0) == 5.0 and wl.expected_arrivals(0, 40) == pytest.approx(200)
    arr = wl.sample(0.0, 400.0, np.random.default_rng(0))
    assert len(arr) == pytest.approx(2000, rel=0.1) and arr.times.max() < 400
    with pytest.raises(ValueError, match="time_scale"):
        scale_profile(prof, 0)


def test_service_time_is_the_models_factor() -> None:
    prof = load_profile("image_classification")
    pre, inf = prof.model("preprocess"), prof.model("inference")
    # CPU: Amdahl against ref_cpu_m (p = 0.5: 2 cores -> 1.33x, a quarter core -> 4x slower)
    assert service_time_s(pre, StageKind.CPU, [0.06], cpu_m=2000, mem_mb=4096) == \
        pytest.approx(0.06 / (1 / (0.5 + 0.25)))
    assert service_time_s(pre, StageKind.CPU, [0.06], cpu_m=250, mem_mb=4096) == \
        pytest.approx(0.24)
    # memory between the OOM ratio and the need: linear slowdown
    slow = pre.memory_effect(0.875 * pre.mem_need_mb)[0]
    assert service_time_s(pre, StageKind.CPU, [0.06], cpu_m=1000,
                          mem_mb=0.875 * pre.mem_need_mb) == pytest.approx(0.06 * slow)
    # GPU: the rate stretches it
    assert service_time_s(inf, StageKind.GPU, [0.005], cpu_m=2000, mem_mb=4096,
                          rate=0.5) == pytest.approx(0.01)
    # batching: one overhead per batch
    emb = load_profile("nlp_analysis").model("embed")
    t = service_time_s(emb, StageKind.GPU, [0.001, 0.002], cpu_m=1000, mem_mb=4096)
    assert t == pytest.approx(0.003 + emb.batch_overhead_s)


def test_emulated_config() -> None:
    pytest.importorskip("ray.serve")
    from serve_apps.emulated import app_builder, emulated_config

    cfg = emulated_config("image_classification", time_scale=10, http_port=8123)
    app = cfg["applications"][0]
    assert app["import_path"] == "serve_apps.emulated:app_builder"
    assert app["external_scaler_enabled"] is True
    assert app["args"]["profile"] == "image_classification"
    assert app["args"]["time_scale"] == 10.0
    deps = {d["name"]: d for d in app["deployments"]}
    assert set(deps) == {"ingress", "preprocess", "inference", "postprocess"}
    assert deps["preprocess"]["num_replicas"] == 1
    assert deps["preprocess"]["ray_actor_options"] == {"num_cpus": 1.0,
                                                       "memory": 1024 * 1024 * 1024}
    assert deps["inference"]["ray_actor_options"]["num_gpus"] == 1
    assert deps["inference"]["user_config"] == {"rate": 1.0, "cold_start": True}
    auto = emulated_config("image_classification", autoscaling={"max_replicas": 6})
    a = auto["applications"][0]
    assert a["external_scaler_enabled"] is False
    d = {x["name"]: x for x in a["deployments"]}["preprocess"]
    assert "num_replicas" not in d
    assert d["autoscaling_config"] == {"initial_replicas": 1, "min_replicas": 1,
                                       "max_replicas": 6}
    with pytest.raises(ValueError, match="needs args.profile"):
        app_builder({})
    with pytest.raises(ValueError, match="unknown argument"):
        app_builder({"profile": "image_classification", "nope": 1})


# -- on Ray ---------------------------------------------------------------------------------
TINY = {
    "name": "emu_tiny", "sla_ms": 2000,
    "cluster": {"cpus": 2, "memory_mb": 8192, "gpus": 0},
    "stages": [
        {"name": "work", "kind": "cpu", "cpu_m_min": 250, "cpu_m_max": 2000,
         "mem_mb_min": 128, "mem_mb_max": 4096, "replicas_max": 4,
         "initial": {"replicas": 1, "cpu_m": 1000, "mem_mb": 256},
         "sim": {"service": {"dist": "deterministic", "mean_ms": 400},
                 "ref_cpu_m": 1000, "parallel_fraction": 1.0, "cold_start_s": 0}},
        {"name": "fin", "kind": "cpu", "cpu_m_min": 250, "cpu_m_max": 1000,
         "mem_mb_min": 128, "mem_mb_max": 4096,
         "initial": {"replicas": 1, "cpu_m": 500, "mem_mb": 256},
         "sim": {"service": {"dist": "deterministic", "mean_ms": 10},
                 "ref_cpu_m": 1000, "cold_start_s": 0}},
    ]}


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_emulated_app_on_logical_resources() -> None:
    pytest.importorskip("ray.serve")
    from sair_ray.backends.ray_serve import ServeAdmin
    from serve_apps.emulated import emulated_config
    from tests.live.helpers import wait_running
    from tests.ray_harness import free_port, private_ray

    prof = profile_from_dict(TINY)
    res = cluster_resources(prof)
    assert res == {"num_cpus": 2, "num_gpus": 0, "memory": 8192 * 1024 * 1024}
    port = free_port()
    with emulation_env(), private_ray(res["num_cpus"], dashboard=True,
                                      num_gpus=res["num_gpus"], memory=res["memory"]) as c:
        admin = ServeAdmin(c.dashboard, timeout_s=120)
        admin.deploy(emulated_config(TINY, http_port=port))
        wait_running(admin, "emu_tiny")
        url = f"http://127.0.0.1:{port}/emu_tiny"
        # the reference time in the request, times the CPU factor (1 core = reference)
        out = _post(url, {"id": 1, "refs": [0.3, 0.01]})
        assert out["label"] == "emulated compute"
        assert 0.3 < out["latency_s"] < 1.0
        # one request at a time per replica: three concurrent requests queue at the router
        with ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda i: _post(url, {"id": 10 + i, "refs": [0.3, 0.01]}), range(3)))
        recs = json.loads(urllib.request.urlopen(f"{url}?records=0").read())["records"]
        work = sorted((r[4][0][1], r[4][0][2]) for r in recs if r[0] >= 10)
        assert len(work) == 3
        for (_, e1), (s2, _) in zip(work, work[1:], strict=False):
            assert s2 >= e1 - 1e-3            # never two at once on the single replica
        for s, e in work:
            assert e - s == pytest.approx(0.3, abs=0.05)
        # a request without refs draws them from the model: 400 ms of work
        out = _post(url, {})
        assert 0.4 <= out["latency_s"] < 1.5
        # logical CPUs: 2 in all; work (1 CPU) + fin (0.5) leave room for no second `work`
        admin.scale("emu_tiny", "work", 2)
        deadline = time.time() + 30
        states: list[str] = []
        while time.time() < deadline:
            reps = admin.details()["applications"]["emu_tiny"]["deployments"]["work"]
            states = sorted(r["state"] for r in reps["replicas"])
            if len(states) == 2:
                break
            time.sleep(0.5)
        assert states.count("RUNNING") == 1 and len(states) == 2, states
        time.sleep(3)   # still not placed: no logical CPU is free
        reps = admin.details()["applications"]["emu_tiny"]["deployments"]["work"]["replicas"]
        assert sum(r["state"] == "RUNNING" for r in reps) == 1
        # the CPU allocation is the replica's speed: 2 cores at p = 1 halve the time,
        # through a redeploy of the config (a rolling restart), as SAIR does it
        admin.scale("emu_tiny", "work", 1)
        from sair_ray.types import StageAllocation

        cfg = emulated_config(TINY, http_port=port,
                              allocation={"work": StageAllocation(1, 1500, 256),
                                          "fin": StageAllocation(1, 250, 256)})
        admin.deploy(cfg)
        deadline = time.time() + 60
        while time.time() < deadline:
            d = admin.details()["applications"]["emu_tiny"]["deployments"]["work"]
            opts = d["deployment_config"]["ray_actor_options"]
            if (opts.get("num_cpus") == 1.5 and d["status"] == "HEALTHY"
                    and [r["state"] for r in d["replicas"]] == ["RUNNING"]):
                break
            time.sleep(0.5)
        out = _post(url, {"id": 99, "refs": [0.3, 0.01]})
        recs = json.loads(urllib.request.urlopen(f"{url}?records=0").read())["records"]
        hop = next(r[4][0] for r in recs if r[0] == 99)
        assert hop[2] - hop[1] == pytest.approx(0.2, abs=0.05)   # 0.3 s at 1.5 cores, p = 1

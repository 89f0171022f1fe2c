"""Real Ray + Serve: deploy the image-classification pipeline, send real HTTP requests,
and check the answers and what the metrics actor reports per stage.

Ray is private to this module (tests/ray_harness.py); Serve's HTTP proxy listens on a free
port."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from sair_ray.observe import AppWindow, MetricsClient, MetricsUnavailable, drop_aggregator
from serve_apps.payloads import example_request
from tests.ray_harness import free_port, private_ray

APP = "image_classification"
PORT = free_port()
URL = f"http://127.0.0.1:{PORT}/{APP}"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def deployed() -> Iterator[str]:
    pytest.importorskip("ray")
    from ray import serve

    from serve_apps import image_classification

    # 6 logical CPUs: the profile asks 1 + 2 + 1 for the three stages (2 real cores here).
    with private_ray(6):
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT})
            image_classification.run({"device": "cpu"})
            yield URL
        finally:
            drop_aggregator(APP)


def post(body: bytes, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(URL, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(fn: Callable[[], AppWindow], ok: Callable[[AppWindow], bool],
             timeout: float = 15) -> AppWindow:
    """Reports arrive about once a second: poll until they are in."""
    deadline = time.time() + timeout
    while True:
        w = fn()
        if ok(w) or time.time() > deadline:
            return w
        time.sleep(0.5)


def test_burst_is_answered_and_measured_per_stage(deployed: str) -> None:
    n = 30
    bodies = [json.dumps(example_request(APP, i % 4)).encode() for i in range(n)]
    client = MetricsClient(APP)
    t0 = time.time()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(post, b) for b in bodies]
        queues = []
        while not all(f.done() for f in futures):   # watch the queue while it builds
            queues.append(client.window(t0, time.time()).stages.get("preprocess"))
            time.sleep(0.3)
        answers = [f.result() for f in futures]
    assert [s for s, _ in answers] == [200] * n
    assert all(len(a["result"]["top_k"]) == 5 for _, a in answers)
    assert max(q.queue for q in queues if q is not None) > 0

    w = wait_for(lambda: client.window(t0, time.time() + 0.001),
                 lambda w: w.completions >= n and all(
                     s.completions >= n for s in w.stages.values()))
    assert (w.arrivals, w.completions, w.errors) == (n, n, 0)
    assert set(w.stages) == {"preprocess", "inference", "postprocess"}
    for st in w.stages.values():
        assert (st.arrivals, st.completions, st.errors, st.replicas) == (n, n, 0, 1)
        assert 0 < st.p50_ms <= st.p99_ms
        assert st.util > 0 and st.throughput_rps > 0 and st.queue == 0
    pre = w.stages["preprocess"]
    # 30 simultaneous requests through one slot: most of them waited in the replica
    assert pre.queue_delay_ms > pre.p50_ms
    assert w.p99_ms >= pre.p99_ms and w.p50_ms <= w.p95_ms <= w.p99_ms
    assert w.arrival_rate == pytest.approx(n / (w.end - w.start))


def test_bad_requests_and_stage_failures_are_explicit_and_counted(deployed: str) -> None:
    t0 = time.time()
    status, body = post(b'{"image_b64": "not base64!"}')
    assert status == 400 and "image_b64" in body["error"]
    status, body = post(b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    # valid base64 but not an image: accepted by the ingress, fails in preprocess
    status, body = post(json.dumps({"image_b64": "aGVsbG8gd29ybGQ="}).encode())
    assert status == 500 and "UnidentifiedImageError" in body["error"]
    with urllib.request.urlopen(URL, timeout=10) as r:   # GET: description, not metered
        assert json.loads(r.read())["stages"] == ["preprocess", "inference", "postprocess"]

    client = MetricsClient(APP)
    # the ingress and the preprocess replica push their meters separately (~1 s
    # batches each), so wait for both sides of the failed request
    w = wait_for(lambda: client.window(t0, time.time() + 0.001),
                 lambda w: w.errors >= 3 and "preprocess" in w.stages
                 and w.stages["preprocess"].errors >= 1)
    assert (w.arrivals, w.errors, w.completions) == (3, 3, 0)
    assert math.isnan(w.p99_ms)
    pre = w.stages["preprocess"]
    assert (pre.arrivals, pre.errors, pre.completions) == (1, 1, 0)
    assert w.stages["inference"].arrivals == 0


def test_client_for_an_absent_app_says_so(deployed: str) -> None:
    with pytest.raises(MetricsUnavailable, match="'sair-metrics:no_such_app'"):
        MetricsClient("no_such_app")


def test_sair_load_traffic_is_fully_accounted_on_both_sides(deployed: str, tmp_path) -> None:
    import asyncio

    from sair_ray.loadgen import LoadRunner, app_bodies, build_plan, summarize
    from sair_ray.workloads import Poisson

    plan = build_plan(Poisson(4.0), 4.0, seed=5)
    runner = LoadRunner(deployed, plan, app_bodies(APP, plan), concurrency=8, timeout_s=60)
    t0 = time.time()
    results = asyncio.run(runner.run())
    s = summarize(results, runner.finished - runner.started)
    assert s.planned == s.sent == s.ok == len(plan) > 5     # nothing lost, nothing failed
    client = MetricsClient(APP)
    w = wait_for(lambda: client.window(t0, time.time() + 0.001),
                 lambda w: w.completions >= len(plan))
    assert (w.arrivals, w.completions, w.errors) == (len(plan), len(plan), 0)
    # the client's latency includes the HTTP proxy; the ingress's starts in its handler
    assert w.p50_ms <= s.p50_ms

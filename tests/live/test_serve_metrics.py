"""`ServeMetrics` (sair_ray/backends/serve_metrics.py) on a real local Ray + Serve running
the plain app (tests/live/fixtures/plain_app.py: no sair-ray import, no instrumentation):
every number comes from what Ray Serve exports by itself.

Ray is started with a fixed metrics export port and a 1 s metrics report interval (Ray's
default is 10 s: windows would only fill 10 s after the requests), then the plain app is
deployed with `serve.run`. Requests go over HTTP through Serve's proxy.

The Prometheus-server path is checked against `MiniProm`, a stand-in for a Prometheus
server: it scrapes the real agent every 0.5 s into an in-memory history and answers
`/api/v1/query?time=t` in Prometheus's documented JSON shape from the latest scrape at or
before t (tests/observe/test_prometheus.py `PromStandIn`); it does not evaluate PromQL.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from sair_ray.backends.metrics import AppWindow
from sair_ray.observe.prometheus import NodeAgents, Snapshot
from tests.observe.test_prometheus import PromStandIn, serve_http
from tests.ray_harness import free_port, private_ray

pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "plain"
STAGES = ["Ingress", "work"]
FAST_RAY_METRICS = {"metrics_report_interval_ms": 1000}


@contextlib.contextmanager
def plain_app(num_cpus: int = 2) -> Iterator[tuple[str, int]]:
    """A private Ray with its metrics agent on a known port, the plain app deployed;
    yields (the app's URL, the metrics export port)."""
    from ray import serve

    mport, http_port = free_port(), free_port()
    with private_ray(num_cpus, metrics_export_port=mport, _system_config=FAST_RAY_METRICS):
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        from tests.live.fixtures.plain_app import app

        serve.run(app, name=APP, route_prefix=f"/{APP}")
        yield f"http://127.0.0.1:{http_port}/{APP}", mport


@pytest.fixture(scope="module")
def plain() -> Iterator[tuple[str, int]]:
    """One cluster for the module's tests (each reads only windows of its own requests)."""
    with plain_app() as app_and_port:
        yield app_and_port


def send(url: str, ok: int, bad: int = 0, workers: int = 4) -> list[int]:
    """`ok` good requests and `bad` ones that make the Ingress raise (HTTP 500)."""

    def one(x: str) -> int:
        try:
            with urllib.request.urlopen(f"{url}?x={x}", timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, ["1"] * ok + ["bad"] * bad))


def until_counted(read, want: int, timeout_s: float = 25.0) -> list[AppWindow]:
    """Windows read about every second until the ingress and `work` have seen `want`
    completions + errors in total (Ray pushes metrics to the agent every second)."""
    windows: list[AppWindow] = []
    deadline = time.time() + timeout_s
    while True:
        time.sleep(1.0)
        windows.append(read())
        done = [sum(w.stages[s].completions + w.stages[s].errors for w in windows)
                for s in STAGES]
        if all(d >= want for d in done) or time.time() > deadline:
            return windows


@pytest.mark.timeout(150)
def test_direct_agents_count_every_request_per_stage(plain) -> None:
    from sair_ray.backends.serve_metrics import serve_metrics_source

    url, _port = plain
    sm = serve_metrics_source(APP, STAGES, "Ingress")   # agents from ray.nodes()
    t0 = time.time()
    first = sm.window(t0 - 10, t0)
    assert any("first window" in p for p in first.partial), first.partial
    # Before any request: the replicas report (gauges), nothing counted.
    time.sleep(1.0)
    idle = sm.window(0, time.time())
    assert idle.arrivals == 0 and all(s.arrivals == 0 for s in idle.stages.values())
    n_ok, n_bad = 12, 2
    codes = send(url, n_ok, n_bad)
    assert sorted(codes) == [200] * n_ok + [500] * n_bad
    ws = until_counted(lambda: sm.window(0, time.time()), n_ok + n_bad)
    ing = [w.stages["Ingress"] for w in ws]
    work = [w.stages["work"] for w in ws]
    assert sum(s.arrivals for s in ing) == n_ok + n_bad
    assert sum(s.completions for s in ing) == n_ok
    assert sum(s.errors for s in ing) == n_bad
    assert sum(s.arrivals for s in work) == sum(s.completions for s in work) == n_ok
    assert sum(w.arrivals for w in ws) == n_ok + n_bad             # app = ingress
    assert sum(w.completions for w in ws) == n_ok                  # at the HTTP proxy
    assert sum(w.errors for w in ws) == n_bad
    busy = [w for w in ws if w.stages["work"].completions > 0]
    for w in busy:                                 # work sleeps 200 ms per request
        sw = w.stages["work"]
        assert 150 <= sw.p50_ms <= 500 and sw.p50_ms <= sw.p99_ms <= 1000, sw
        assert sw.util > 0 and sw.replicas == 1 and sw.throughput_rps > 0
    assert any(150 <= w.p50_ms <= 2000 for w in ws if w.completions > 0)
    assert all(w.partial == () for w in ws), [w.partial for w in ws]
    # Nothing more arrives: the next window is empty and idle.
    time.sleep(2.5)
    after = sm.window(0, time.time())
    assert after.arrivals == 0 and after.stages["work"].completions == 0
    assert after.stages["work"].ongoing == 0 and after.in_flight == 0
    assert sm.usage["work"].rss_mb > 0
    sm.close()


class MiniProm:
    """Stand-in for a Prometheus server (module docstring): scrapes `agent` every
    `every_s` into a history and serves it through `PromStandIn`."""

    def __init__(self, agent: str, every_s: float = 0.5) -> None:
        self.history: list[Snapshot] = []
        self._agents = NodeAgents([agent], timeout_s=5)
        self._stop = threading.Event()
        self._every = every_s
        self.api = PromStandIn(lambda: list(self.history))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.history.append(self._agents.snapshot())
            self._stop.wait(self._every)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._agents.close()


@pytest.mark.timeout(150)
def test_prometheus_server_reader_counts_a_window_between_two_times(plain) -> None:
    from sair_ray.backends.serve_metrics import serve_metrics_source

    url, port = plain
    prom = MiniProm(f"127.0.0.1:{port}")
    try:
        with serve_http(prom.api.answer) as addr:
            sm = serve_metrics_source(APP, STAGES, "Ingress",
                                      prometheus_url=f"http://{addr}")
            time.sleep(2.0)              # Ray's first push and a scrape of it
            t0 = time.time()
            assert send(url, 8) == [200] * 8
            time.sleep(3.5)              # pushed (1 s) and scraped (0.5 s)
            t1 = time.time()
            w = sm.window(t0, t1)
            assert (w.start, w.end) == (t0, t1) and w.partial == ()
            assert w.stages["work"].completions == w.stages["Ingress"].arrivals == 8
            assert w.completions == 8 and w.errors == 0
            assert 150 <= w.stages["work"].p50_ms <= 500
            assert w.arrival_rate == pytest.approx(8 / (t1 - t0))
            assert all('application="plain"' in q for q, _ in prom.api.queries)
            before = sm.window(t0 - 1.0, t0)                  # before the requests
            assert before.stages["work"].completions == 0
    finally:
        prom.close()

"""sair_ray/observe/prometheus.py (text format, histograms, readers) and
sair_ray/backends/serve_metrics.py on real data without Ray: the fixtures under
tests/observe/fixtures/ are scrapes of a real Ray 2.60 metrics agent serving
tests/live/fixtures/plain_app.py (before any request; after 20 ok and 3 failed requests).

`PromStandIn` is a stand-in for a Prometheus server: it answers `GET /api/v1/query` in the
JSON shape Prometheus documents (https://prometheus.io/docs/prometheus/latest/querying/api/
#instant-queries) from snapshots it holds, to check the reader's request and response
handling. It does not evaluate PromQL (it returns every series it holds at or before the
asked time): the selectors' filtering is Prometheus's job, not under test here.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sair_ray.backends.metrics import AppWindow, coarse_sla_reading, context_from_window
from sair_ray.backends.serve_metrics import (
    PREFIXES,
    ServeMetrics,
    ServeMetricsError,
    serve_metrics_source,
)
from sair_ray.observe.prometheus import (
    Histogram,
    MetricsReadError,
    NodeAgents,
    PrometheusServer,
    Snapshot,
    counter_delta,
    parse_labels,
    parse_text,
)
from tests.ray_harness import free_port

FIXTURES = Path(__file__).parent / "fixtures"
BEFORE = (FIXTURES / "agent_before.prom").read_text()
AFTER = (FIXTURES / "agent_after.prom").read_text()


# -- a stand-in for Prometheus's HTTP API and for a metrics agent ---------------------------
def vector(snap: Snapshot) -> list[dict]:
    """A snapshot as Prometheus's instant-query `data.result` (resultType vector)."""
    return [{"metric": {"__name__": name, **dict(labels)}, "value": [snap.time, repr(v)]}
            for name, series in snap.families.items() for labels, v in series.items()]


class PromStandIn:
    """Answers `/api/v1/query?query=..&time=t` with the latest held snapshot at or before
    t (see the module docstring); `queries` records (query, time) of every request."""

    def __init__(self, snapshots: Callable[[], list[Snapshot]]) -> None:
        self.snapshots = snapshots
        self.queries: list[tuple[str, float]] = []
        self.fail: str | None = None

    def answer(self, path: str) -> tuple[int, dict]:
        url = urllib.parse.urlparse(path)
        if url.path != "/api/v1/query":
            return 404, {"status": "error", "errorType": "not_found", "error": url.path}
        qs = urllib.parse.parse_qs(url.query)
        query, t = qs["query"][0], float(qs["time"][0])
        self.queries.append((query, t))
        if self.fail:
            return 400, {"status": "error", "errorType": "bad_data", "error": self.fail}
        held = [s for s in self.snapshots() if s.time <= t]
        result = vector(held[-1]) if held else []
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


@contextlib.contextmanager
def serve_http(handler: Callable[[str], tuple[int, str | dict]]) -> Iterator[str]:
    """A local HTTP server answering GET with `handler(path) -> (status, body)`; yields
    its host:port."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, body = handler(self.path)
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def snap(text: str, t: float) -> Snapshot:
    return Snapshot(t, parse_text(text, PREFIXES), ("fixture",))


# -- the text format -------------------------------------------------------------------------
def test_labels_with_escapes_and_odd_spacing() -> None:
    assert parse_labels('b="x\\"y", a="1",c="back\\\\slash\\n"') == (
        ("a", "1"), ("b", 'x"y'), ("c", "back\\slash\n"))
    assert parse_labels("") == ()
    with pytest.raises(ValueError):
        parse_labels('a="1" junk')


def test_text_format_values_comments_timestamps_and_prefix_filter() -> None:
    text = "\n".join([
        "# HELP x_total a counter", "# TYPE x_total counter",
        'x_total{a="1"} 3', 'x_total{a="2"} 4 1700000000000', "x_total 1e3",
        'h_bucket{le="+Inf"} 7', "g NaN", "g2 -Inf", "bad line here", "y{a=} 1", ""])
    fams = parse_text(text)
    assert fams["x_total"] == {(("a", "1"),): 3.0, (("a", "2"),): 4.0, (): 1000.0}
    assert fams["h_bucket"] == {(("le", "+Inf"),): 7.0}
    assert math.isnan(fams["g"][()]) and fams["g2"][()] == -math.inf
    assert "bad" not in fams and "y" not in fams
    assert set(parse_text(text, ["x_"])) == {"x_total"}


def test_real_agent_scrape_parses_and_filters() -> None:
    everything = parse_text(AFTER)
    assert "ray_tasks" in everything
    fams = parse_text(AFTER, PREFIXES)
    assert "ray_tasks" not in fams
    s = Snapshot(0, fams)
    work = {"application": "plain", "deployment": "work"}
    ingress = {"application": "plain", "deployment": "Ingress"}
    assert s.total("ray_serve_deployment_request_counter_total", work) == 20
    assert s.total("ray_serve_deployment_request_counter_total", ingress) == 20
    assert s.total("ray_serve_deployment_error_counter_total", ingress) == 3
    assert s.total("ray_serve_num_router_requests_total", ingress) == 23
    h = s.histogram("ray_serve_deployment_processing_latency_ms", work)
    assert h.count == 20 and 20 * 200 <= h.sum < 20 * 300
    assert h.buckets[-1] == (math.inf, 20.0)


# -- histograms and counters -------------------------------------------------------------------
def test_quantile_interpolates_inside_the_bucket_like_promql() -> None:
    h = Histogram(((0.1, 1.0), (0.2, 3.0), (math.inf, 4.0)), 4, 0.9)
    assert h.quantile(0.5) == pytest.approx(0.15)     # rank 2 in (0.1, 0.2]: 1 of 2
    assert h.quantile(0.25) == pytest.approx(0.1)     # rank 1: top of the first bucket
    assert h.quantile(0.1) == pytest.approx(0.04)     # first bucket: from 0
    assert h.quantile(0.99) == 0.2                    # +Inf bucket: highest finite bound
    assert h.mean == pytest.approx(0.225)
    assert math.isnan(Histogram().quantile(0.5))
    assert math.isnan(Histogram(((1.0, 0.0), (math.inf, 0.0))).quantile(0.5))
    assert math.isnan(Histogram().mean)


def test_a_p99_interpolated_in_a_wide_bucket_around_the_sla_is_flagged() -> None:
    # Serve's default buckets: 5 s, 10 s, 60 s. 95 of 100 requests under 10 s, 5 between
    # 10 and 60 s: the p99 reads 50 s whatever they took, and the SLA (20 s) is inside
    h = Histogram(((5000.0, 60.0), (10000.0, 95.0), (60000.0, 100.0), (math.inf, 100.0)),
                  100, 0.0)
    assert h.bucket_of(0.99) == (10000.0, 60000.0)
    assert h.quantile(0.99) == pytest.approx(50000.0)
    w = AppWindow(app="a", start=0.0, end=15.0, p99_ms=h.quantile(0.99),
                  p99_bucket_ms=h.bucket_of(0.99))
    assert "10000-60000 ms" in coarse_sla_reading(w, 20000.0)
    assert coarse_sla_reading(w, 5000.0) == ""         # the SLA is not in that bucket
    fine = Histogram(((15000.0, 95.0), (20000.0, 99.5), (math.inf, 100.0)), 100, 0.0)
    assert coarse_sla_reading(AppWindow(app="a", start=0.0, end=15.0,
                                        p99_bucket_ms=fine.bucket_of(0.99)), 20000.0) == ""
    assert coarse_sla_reading(AppWindow(app="a", start=0.0, end=15.0), 20000.0) == ""
    assert all(math.isnan(x) for x in Histogram().bucket_of(0.99))


def test_histogram_delta_only_counts_the_window_and_survives_a_reset() -> None:
    def text(c1: float, c2: float, s: float) -> str:
        return (f'lat_bucket{{r="a",le="10"}} {c1}\nlat_bucket{{r="a",le="+Inf"}} {c2}\n'
                f'lat_sum{{r="a"}} {s}\nlat_count{{r="a"}} {c2}\n')

    a = Snapshot(0, parse_text(text(5, 10, 100)))
    b = Snapshot(1, parse_text(text(9, 14, 150)))
    d = Histogram.delta(a, b, "lat")
    assert d.buckets == ((10.0, 4.0), (math.inf, 4.0)) and d.count == 4 and d.sum == 50
    assert d.quantile(0.5) == pytest.approx(5.0)
    reset = Snapshot(2, parse_text(text(1, 2, 30)))   # the replica restarted
    assert Histogram.delta(b, reset, "lat").count == 2
    assert Histogram.delta(None, b, "lat").count == 0


def test_counter_delta_new_reset_and_gone_series() -> None:
    a = {(("r", "1"),): 10.0, (("r", "2"),): 5.0, (("r", "gone"),): 7.0}
    b = {(("r", "1"),): 12.0, (("r", "2"),): 3.0, (("r", "new"),): 4.0}
    assert counter_delta(a, b) == 2 + 3 + 4
    assert counter_delta(None, b) == 0


# -- readers -----------------------------------------------------------------------------------
def test_node_agents_scrape_every_address_and_name_the_dead_ones() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with serve_http(lambda path: (200, AFTER) if path == "/metrics" else (404, "")) as addr:
        agents = NodeAgents([addr, dead], timeout_s=30, prefixes=PREFIXES)
        s = agents.snapshot()
        assert s.sources == (addr,) and dead in s.failed
        assert s.total("ray_serve_deployment_request_counter_total",
                       {"deployment": "work"}) == 20
        agents.close()
    with pytest.raises(MetricsReadError, match=r"--metrics-export-port") as e:
        NodeAgents([dead], timeout_s=1).snapshot()
    assert dead in str(e.value)


def test_node_agents_same_series_on_two_nodes_are_kept_apart() -> None:
    with serve_http(lambda p: (200, AFTER)) as a1, serve_http(lambda p: (200, AFTER)) as a2:
        agents = NodeAgents([a1, a2], timeout_s=30, prefixes=PREFIXES)
        s = agents.snapshot()
        agents.close()
    assert s.total("ray_serve_deployment_request_counter_total", {"deployment": "work"}) == 40


def test_node_agents_discover_addresses_and_rediscover_after_a_failure() -> None:
    calls = []
    with serve_http(lambda p: (200, AFTER)) as addr:
        agents = NodeAgents(discover=lambda: calls.append(1) or [addr], rediscover_s=3600,
                            timeout_s=30)
        agents.snapshot()
        agents.snapshot()
        assert len(calls) == 1
    with pytest.raises(MetricsReadError):
        agents.snapshot()                 # the node went away
    with pytest.raises(MetricsReadError):
        agents.snapshot()
    assert len(calls) == 2                # looked again after the failed round
    agents.close()
    with pytest.raises(MetricsReadError, match="no Ray node"):
        NodeAgents(discover=list).snapshot()


def test_prometheus_server_request_and_response_shape() -> None:
    stand_in = PromStandIn(lambda: [snap(BEFORE, 100.0), snap(AFTER, 110.0)])
    with serve_http(stand_in.answer) as addr:
        server = PrometheusServer(f"http://{addr}/", timeout_s=30)
        s = server.snapshot(105.0, ['{__name__=~"ray_serve_.+"}', "up"])
        assert stand_in.queries == [('{__name__=~"ray_serve_.+"} or up', 105.0)]
        assert s.total("ray_serve_replica_processing_queries") == \
            snap(BEFORE, 0).total("ray_serve_replica_processing_queries")
        assert server.snapshot(50.0, ["up"]).families == {}
        stand_in.fail = "parse error at char 3"
        with pytest.raises(MetricsReadError, match="parse error at char 3"):
            server.snapshot(110.0, ["up"])
    with pytest.raises(MetricsReadError, match="cannot reach Prometheus"):
        PrometheusServer(f"127.0.0.1:{free_port()}", timeout_s=1).query("up", 0)


# -- ServeMetrics on the real scrapes -------------------------------------------------------
class FixedAgents:
    def __init__(self, *snaps: Snapshot) -> None:
        self.snaps = list(snaps)

    def snapshot(self) -> Snapshot:
        return self.snaps.pop(0)

    def close(self) -> None:
        pass


def direct(*snaps: Snapshot, **kw: object) -> ServeMetrics:
    sm = serve_metrics_source("plain", ["Ingress", "work"], "Ingress",
                              agents=["unused:1"], **kw)
    assert sm.agents is not None
    sm.agents.close()
    sm.agents = FixedAgents(*snaps)  # type: ignore[assignment]
    return sm


def check_window(w: AppWindow) -> None:
    ing, work = w.stages["Ingress"], w.stages["work"]
    assert (ing.arrivals, ing.completions, ing.errors) == (23, 20, 3)
    assert (work.arrivals, work.completions, work.errors) == (20, 20, 0)
    assert ing.replicas == work.replicas == 1
    assert 200 <= work.p50_ms <= 300 and 200 <= work.p99_ms <= 300
    assert work.queue == work.ongoing == 0
    # 20 requests of ~250 ms on one replica: ~5 busy-seconds per window of 10 s
    assert work.util == pytest.approx(work.throughput_rps * 0.25, rel=0.3)
    assert work.gpu_util is None and work.queue_delay_ms >= 0
    assert (w.arrivals, w.completions, w.errors) == (23, 20, 3)   # at Serve's HTTP proxy
    assert 200 <= w.p50_ms <= w.p95_ms <= w.p99_ms <= 1000
    assert w.partial == ()


def test_serve_metrics_first_window_is_partial_then_counts_the_scrape_interval() -> None:
    sm = direct(snap(BEFORE, 100.0), snap(AFTER, 110.0))
    first = sm.window(90.0, 100.0)
    assert any("first window" in p for p in first.partial)
    assert first.stages["work"].arrivals == 0 and math.isnan(first.p99_ms)
    w = sm.window(100.0, 110.0)
    check_window(w)
    assert w.arrival_rate == pytest.approx(2.3)
    assert w.stages["work"].throughput_rps == pytest.approx(2.0)
    assert w.to_dict()["partial"] == ()
    assert sm.usage["work"].rss_mb > 0 and sm.usage["work"].processes >= 1


def test_serve_metrics_rates_use_the_real_scrape_span_not_the_asked_window() -> None:
    sm = direct(snap(BEFORE, 100.0), snap(AFTER, 105.0))
    sm.window(0, 100)
    w = sm.window(95.0, 110.0)                    # asked 15 s; scrapes 5 s apart
    assert (w.start, w.end) == (95.0, 110.0)
    assert w.arrival_rate == pytest.approx(23 / 5)


def test_serve_metrics_flags_a_stage_that_has_not_reported() -> None:
    sm = serve_metrics_source("plain", ["Ingress", "work", "post"], agents=["unused:1"])
    assert sm.agents is not None
    sm.agents.close()
    sm.agents = FixedAgents(snap(BEFORE, 0), snap(AFTER, 10))  # type: ignore[assignment]
    sm.window(0, 0)
    w = sm.window(0, 10)
    assert w.partial == ("stage post: no samples yet (no replica has reported)",)
    assert w.stages["post"].replicas == 0 and w.stages["work"].completions == 20


def test_serve_metrics_unknown_app_is_partial_and_no_serve_at_all_is_an_error() -> None:
    sm = serve_metrics_source("nope", ["a"], agents=["unused:1"])
    assert sm.agents is not None
    sm.agents.close()
    sm.agents = FixedAgents(snap(AFTER, 0))  # type: ignore[assignment]
    assert any("'nope': no Serve series" in p for p in sm.window(0, 0).partial)
    sm.agents = FixedAgents(Snapshot(0, {"ray_component_rss_mb": {(): 1.0}},  # type: ignore[assignment]
                                     ("10.0.0.1:8080",)))
    with pytest.raises(ServeMetricsError, match=r"10\.0\.0\.1:8080.*ray_serve_deployment_"):
        sm.window(0, 0)


def test_serve_metrics_context_and_options() -> None:
    from sair_ray.types import PipelineSpec, StageAllocation, StageSpec

    sm = direct(snap(BEFORE, 100.0), snap(AFTER, 110.0), max_ongoing={"work": 5})
    sm.window(0, 100)
    w = sm.window(100, 110)
    # 5 slots per replica: Serve's utilisation formula over the window
    assert w.stages["work"].util == pytest.approx(0.1, rel=0.3)
    assert w.stages["Ingress"].util == pytest.approx(0.5, rel=0.3)   # default: 1 slot
    spec = PipelineSpec("plain", (StageSpec("Ingress"), StageSpec("work")), sla_ms=1000)
    alloc = {s.name: StageAllocation(1, 100, 256) for s in spec.stages}
    ctx = context_from_window(w, spec, alloc)
    assert ctx.arrival_rate == pytest.approx(2.3) and ctx.errors == 3
    assert ctx.stages[1].util == w.stages["work"].util and 200 <= ctx.p99_ms <= 1000
    with pytest.raises(ValueError, match="ingress"):
        ServeMetrics("plain", ["a"], "b")


def test_serve_metrics_via_a_prometheus_server_matches_the_direct_reading() -> None:
    stand_in = PromStandIn(lambda: [snap(BEFORE, 100.0), snap(AFTER, 110.0)])
    with serve_http(stand_in.answer) as addr:
        # a generous timeout: a loaded CI machine may take seconds to schedule the server
        sm = serve_metrics_source("plain", ["Ingress", "work"], "Ingress",
                                  prometheus_url=f"http://{addr}", timeout_s=30)
        w = sm.window(100.0, 110.0)
        check_window(w)
        assert [t for _, t in stand_in.queries] == [100.0, 110.0]
        assert 'application="plain"' in stand_in.queries[0][0]
        sm.window(110.0, 120.0)                   # start == last end: one query, not two
        assert [t for _, t in stand_in.queries][2:] == [120.0]


def test_an_agent_that_fails_and_comes_back_is_not_counted_twice() -> None:
    pages = {"a": [BEFORE, AFTER, AFTER], "b": [BEFORE, None, AFTER]}

    def node(key: str) -> Callable[[str], tuple[int, str]]:
        def answer(path: str) -> tuple[int, str]:
            page = pages[key].pop(0) if len(pages[key]) > 1 else pages[key][0]
            return (200, page) if page is not None else (500, "down")
        return answer

    with serve_http(node("a")) as a, serve_http(node("b")) as b:
        sm = serve_metrics_source("plain", ["Ingress", "work"], agents=[a, b])
        first = sm.window(0, 0)
        assert any("first window" in p for p in first.partial)
        w = sm.window(0, 0)                       # b failed: a's 20 requests only
        assert w.stages["work"].completions == 20
        assert any(p.startswith(f"agent {b} unreachable") for p in w.partial)
        w = sm.window(0, 0)                       # b is back: a baseline, not +20
        assert w.stages["work"].completions == 0
        assert any(f"agent(s) {b}: first scrape" in p for p in w.partial)
        sm.close()

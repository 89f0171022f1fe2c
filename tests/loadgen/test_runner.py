"""LoadRunner against a real local HTTP server: schedule, concurrency bound, timeouts,
errors and stops are all accounted for, request by request."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from sair_ray.loadgen import (
    LoadPlan,
    LoadRunner,
    build_plan,
    summarize,
    write_results,
)
from sair_ray.workloads import Poisson
from tests.loadgen.conftest import ServerState, free_port

pytestmark = pytest.mark.timeout(60)


def plan_at(times: list[float], duration: float | None = None) -> LoadPlan:
    return LoadPlan(np.asarray(times, dtype=float),
                    duration_s=duration if duration is not None else max(times) + 0.01)


def body(i: int) -> bytes:
    return json.dumps({"i": i}).encode()


def test_poisson_plan_is_sent_on_schedule_and_all_answered(fresh: ServerState) -> None:
    plan = build_plan(Poisson(40.0), 2.0, seed=3)
    runner = LoadRunner(fresh.url, plan, body, concurrency=16, timeout_s=5)
    results = asyncio.run(runner.run())
    s = summarize(results, runner.finished - runner.started, runner.max_in_flight)
    assert 50 <= len(plan) <= 110            # Poisson(80) for this seed, not a fixed count
    assert s.planned == s.sent == s.ok == fresh.received == len(plan)
    assert sorted(json.loads(b)["i"] for b in fresh.bodies) == list(range(len(plan)))
    # open loop: sends follow the plan (the server answers at once, so no slot waits)
    delays = np.array([r.send_delay_ms for r in results])
    assert np.median(delays) < 50 and s.p50_ms > 0 and s.p99_ms >= s.p50_ms


def test_concurrency_is_bounded_and_the_wait_is_recorded(fresh: ServerState) -> None:
    url = fresh.url + "?delay_ms=150"
    runner = LoadRunner(url, plan_at([0.0] * 20), body, concurrency=4, timeout_s=10)
    results = asyncio.run(runner.run())
    assert all(r.status == "ok" for r in results)
    assert fresh.max_in_flight == 4 and runner.max_in_flight == 4
    # 20 requests through 4 slots of 150 ms: the last group waited >= 4 x 150 ms
    assert max(r.send_delay_ms for r in results) >= 500


def test_timeouts_http_errors_and_refused_connections_are_counted(
        fresh: ServerState) -> None:
    cases = {
        "timeout": (fresh.url + "?delay_ms=3000", 0.3),
        "http_error": (fresh.url + "?status=503", 5.0),
        "conn_error": (f"http://127.0.0.1:{free_port()}/nothing", 5.0),
    }
    for status, (url, timeout) in cases.items():
        runner = LoadRunner(url, plan_at([0.0, 0.01, 0.02]), body, concurrency=8,
                            timeout_s=timeout)
        results = asyncio.run(runner.run())
        assert [r.status for r in results] == [status] * 3, (status, results)
        assert all(r.error for r in results)
        s = summarize(results, 1.0)
        assert s.sent == 3 and s.ok == 0 and s.errors + s.timeouts == 3
        assert math.isnan(s.p99_ms)
    assert results[0].http_status == 0
    assert {r.http_status for r in asyncio.run(LoadRunner(
        fresh.url + "?status=503", plan_at([0.0]), body).run())} == {503}


def test_time_limit_leaves_late_requests_not_sent_and_slow_ones_cancelled(
        fresh: ServerState) -> None:
    url = fresh.url + "?delay_ms=5000"
    runner = LoadRunner(url, plan_at([0.0, 0.1, 3.0, 4.0]), body, concurrency=8,
                        timeout_s=30, time_limit_s=0.8)
    results = asyncio.run(runner.run())
    assert [r.status for r in results] == ["cancelled", "cancelled", "not_sent", "not_sent"]
    assert runner.finished - runner.started < 3
    assert summarize(results, 1).sent == 2


def test_stop_keeps_partial_results(fresh: ServerState) -> None:
    runner = LoadRunner(fresh.url, plan_at([i * 0.05 for i in range(100)]), body,
                        concurrency=8, timeout_s=5)

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.6, runner.stop)
        await runner.run()

    asyncio.run(main())
    statuses = [r.status for r in runner.results]
    assert len(statuses) == 100
    assert 3 <= statuses.count("ok") <= 30 and statuses.count("not_sent") >= 60
    assert set(statuses) <= {"ok", "not_sent", "cancelled"}


def test_results_round_trip_through_parquet_and_csv(fresh: ServerState, tmp_path) -> None:
    runner = LoadRunner(fresh.url, plan_at([0.0, 0.0, 5.0]), body, time_limit_s=1.0)
    results = asyncio.run(runner.run())
    t = pq.read_table(write_results(results, tmp_path / "r.parquet")).to_pydict()
    assert t["status"] == ["ok", "ok", "not_sent"] and t["index"] == [0, 1, 2]
    assert t["latency_ms"][0] > 0 and math.isnan(t["latency_ms"][2])
    lines = write_results(results, tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("index,scheduled_s,status") and len(lines) == 4
    with pytest.raises(ValueError, match=r"r\.txt"):
        write_results(results, tmp_path / "r.txt")


def test_bad_runner_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LoadRunner("http://x", plan_at([0.0]), body, concurrency=0)
    with pytest.raises(ValueError, match="ftp://x"):
        LoadRunner("ftp://x", plan_at([0.0]), body)

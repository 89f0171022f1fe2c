"""StageMeter inside an asyncio loop: queueing is measured, errors are counted, reports
reach the sink (a real MetricsStore) and survive a failing sink."""

from __future__ import annotations

import asyncio

import pytest

from sair_ray.observe import INGRESS, MetricsStore, StageMeter
from sair_ray.observe.store import ReplicaReport


def test_requests_beyond_concurrency_wait_and_their_delay_is_measured() -> None:
    store = MetricsStore("app")
    meter = StageMeter("app", "pre", concurrency=1, sink=store.push, replica="r1",
                       cores=1.0, flush_interval_s=60)

    async def one(work_s: float, fail: bool = False) -> None:
        async with meter.slot():
            await asyncio.sleep(work_s)
            if fail:
                raise RuntimeError("boom")

    async def main() -> tuple[int, int]:
        tasks = [asyncio.create_task(one(0.05)) for _ in range(3)]
        tasks.append(asyncio.create_task(one(0.0, fail=True)))
        await asyncio.sleep(0.01)
        seen = (meter.waiting, meter.ongoing)
        await asyncio.gather(*tasks, return_exceptions=True)
        await meter.flush()
        return seen

    t0 = meter.clock()
    waiting, ongoing = asyncio.run(main())
    assert (waiting, ongoing) == (3, 1)
    w = store.window(t0 - 1, meter.clock() + 0.01)
    st = w.stages["pre"]
    assert st.arrivals == 4 and st.completions == 3 and st.errors == 1
    assert 40 < st.p50_ms < 150
    # serialised: waits of ~0, 50, 100 ms (+ the failing one's) -> mean well above 0
    assert st.queue_delay_ms > 20
    assert st.queue == 0 and st.ongoing == 0


def test_failed_push_is_retried_and_nothing_is_lost() -> None:
    store = MetricsStore("app")
    calls = {"n": 0}

    def flaky(batch: list[ReplicaReport]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("actor restarting")
        store.push(batch)

    meter = StageMeter("app", "pre", concurrency=2, sink=flaky, replica="r", cores=1.0)

    async def main() -> None:
        for _ in range(5):
            async with meter.slot():
                pass
        await meter.flush()          # fails, kept
        meter._sink = flaky          # the meter forgets a failing sink; give it back
        async with meter.slot():
            pass
        await meter.flush()

    t0 = meter.clock()
    asyncio.run(main())
    assert store.window(t0 - 1, meter.clock() + 1).stages["pre"].completions == 6


def test_pending_records_are_bounded_and_drops_counted() -> None:
    meter = StageMeter("app", "pre", concurrency=None, sink=lambda b: None, replica="r",
                       cores=1.0, max_pending=10)

    async def main() -> None:
        for _ in range(25):
            async with meter.slot():
                pass

    asyncio.run(main())
    assert len(meter.report().records) == 10 and meter.dropped_records == 15


def test_bad_concurrency_names_the_stage() -> None:
    with pytest.raises(ValueError, match="'pre'"):
        StageMeter("app", "pre", concurrency=0, sink=lambda b: None, replica="r", cores=1)


def test_body_can_mark_a_handled_failure() -> None:
    meter = StageMeter("app", INGRESS, concurrency=None, sink=lambda b: None, replica="i",
                       cores=1.0)

    async def main() -> None:
        async with meter.slot() as outcome:
            outcome.ok = False
        async with meter.slot():
            pass

    asyncio.run(main())
    assert [r[3] for r in meter.report().records] == [False, True]

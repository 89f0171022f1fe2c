"""MetricsStore: window arithmetic on hand-built replica reports (no Ray)."""

from __future__ import annotations

import math

import pytest

from sair_ray.observe import INGRESS, MetricsStore
from sair_ray.observe.store import ReplicaReport


def rep(stage: str, replica: str, t: float, *, arrivals: int, records=(), cpu_s: float = 0.0,
        interval: float = 1.0, cores: float = 1.0, waiting: int = 0, ongoing: int = 0,
        gpu: float | None = None) -> ReplicaReport:
    return ReplicaReport(stage, replica, t, interval, cpu_s, cores, waiting, ongoing, arrivals,
                         tuple(records), gpu)


def test_stage_window_counts_latencies_queue_and_util() -> None:
    s = MetricsStore("app")
    # replica a: 2 requests in the window (10 ms and 30 ms processing, 5 ms / 15 ms wait)
    s.push([
        rep("pre", "a", 100.0, arrivals=0),
        rep("pre", "a", 101.0, arrivals=2, cpu_s=0.5,
            records=[(100.1, 100.105, 100.115, True), (100.2, 100.215, 100.245, True)]),
        rep("pre", "a", 102.0, arrivals=3, cpu_s=0.25, waiting=4, ongoing=1,
            records=[(101.0, 101.0, 101.5, False)]),
        rep("pre", "b", 102.0, arrivals=1, cpu_s=0.25, cores=0.5, waiting=1),
    ])
    w = s.window(100.0, 102.0)
    st = w.stages["pre"]
    assert st.arrivals == 4            # a: 3 - 0, b: 1 - 0 (b started inside the window)
    assert st.completions == 2 and st.errors == 1
    assert st.p50_ms == pytest.approx(20.0)
    assert st.p99_ms == pytest.approx(10 + 0.99 * 20)
    assert st.queue_delay_ms == pytest.approx(10.0)
    assert (st.queue, st.ongoing, st.replicas) == (5, 1, 2)
    assert st.util == pytest.approx((0.5 + 0.25 + 0.25) / (1 + 1 + 0.5))
    assert st.throughput_rps == pytest.approx(1.0)
    assert st.gpu_util is None
    assert math.isnan(w.p99_ms) and w.arrivals == 0   # no ingress reported


def test_ingress_gives_end_to_end_numbers_and_in_flight() -> None:
    s = MetricsStore("app")
    recs = [(10.0 + i * 0.1, 10.0 + i * 0.1, 10.0 + i * 0.1 + 0.2 + i * 0.001, True)
            for i in range(50)]
    s.push([rep(INGRESS, "i", 9.0, arrivals=0),
            rep(INGRESS, "i", 15.0, arrivals=60, records=recs + [(11, 11, 12, False)],
                ongoing=9)])
    w = s.window(10.0, 20.0)
    assert w.arrivals == 60 and w.arrival_rate == pytest.approx(6.0)
    assert w.completions == 50 and w.errors == 1
    assert 200 < w.p50_ms < w.p95_ms < w.p99_ms < 250
    assert w.in_flight == 0            # the ingress sample at 15 is stale at 20 (> 3 s)
    assert s.window(10.0, 16.0).in_flight == 9
    assert INGRESS not in w.stages
    d = w.to_dict()
    assert d["stages"] == {} and d["p99_ms"] == pytest.approx(w.p99_ms)


def test_window_outside_data_is_empty_not_an_error() -> None:
    s = MetricsStore("app")
    s.push([rep("pre", "a", 100.0, arrivals=5, records=[(99.0, 99.0, 99.5, True)])])
    st = s.window(200.0, 230.0).stages["pre"]
    assert (st.arrivals, st.completions, st.replicas) == (0, 0, 0)
    assert math.isnan(st.p99_ms) and math.isnan(st.util)
    assert s.window(200.0, 230.0).to_dict()["stages"]["pre"]["p99_ms"] is None


def test_bad_window_is_rejected_with_the_values() -> None:
    with pytest.raises(ValueError, match=r"\[5.0, 5.0\)"):
        MetricsStore("app").window(5.0, 5.0)


def test_memory_is_bounded_by_records_and_retention() -> None:
    s = MetricsStore("app", retention_s=60.0, max_records=100)
    for i in range(100):
        t = float(i)
        s.push([rep("pre", "a", t, arrivals=i * 10,
                    records=[(t, t, t + 0.01, True)] * 10)])
    assert s.record_count() <= 100
    s.push([rep("pre", "b", 1000.0, arrivals=1)])   # moves the newest time far ahead
    assert s.record_count() == 0
    assert s.window(990.0, 1001.0).stages["pre"].replicas == 1   # replica a expired


def test_gpu_util_from_shim_samples() -> None:
    s = MetricsStore("app")
    s.push([rep("infer", "g", 1.0, arrivals=0, gpu=0.0),
            rep("infer", "g", 2.0, arrivals=0, gpu=0.25),
            rep("infer", "g", 3.0, arrivals=0, gpu=0.75)])
    assert s.window(1.5, 3.0).stages["infer"].gpu_util == pytest.approx(0.5)


class _ScanStore(MetricsStore):
    """The store as it was before expiry used a heap: every push scanned every replica.
    The reference the heap version must agree with."""

    def _expire(self) -> None:
        horizon = self._newest - self.retention_s
        for data in self._stages.values():
            while data.chunks and data.chunks[0][0] < horizon:
                data.rows -= len(data.chunks.popleft()[1])
            for rid in [r for r, s in data.samples.items() if s[-1].time < horizon]:
                del data.samples[rid]
            for s in data.samples.values():
                while len(s) > 1 and s[0].time < horizon:
                    s.popleft()


def test_heap_expiry_gives_the_same_windows_as_scanning_every_replica() -> None:
    import random

    rng = random.Random(7)
    kw = {"retention_s": 20.0, "max_samples": 8, "max_records": 500}
    fast, ref = MetricsStore("app", **kw), _ScanStore("app", **kw)
    arrivals: dict[str, int] = {}
    # 40 replicas over 3 stages that come and go (some stop reporting and expire, some
    # come back under the same id), pushed one report at a time and in batches
    for step in range(400):
        t = 100.0 + step * 0.25
        batch = []
        for _ in range(rng.randint(1, 6)):
            stage = rng.choice(["pre", "infer", INGRESS])
            rid = f"{stage}-{rng.randint(0, 12 if step < 200 else 4)}"
            n = rng.randint(0, 3)
            arrivals[rid] = arrivals.get(rid, 0) + n
            recs = [(t - 0.3, t - 0.2, t - rng.random() * 0.1, rng.random() > 0.1)
                    for _ in range(n)]
            batch.append(rep(stage, rid, t, arrivals=arrivals[rid], records=recs,
                             cpu_s=rng.random(), waiting=rng.randint(0, 3),
                             ongoing=rng.randint(0, 2),
                             gpu=rng.random() if stage == "infer" else None))
        fast.push(batch)
        ref.push(batch)
        if step % 20 == 19:
            for start, end in ((t - 10, t), (t - 30, t + 1), (t - 2.5, t - 0.5)):
                assert fast.window(start, end).to_dict() == ref.window(start, end).to_dict()
            assert fast.record_count() == ref.record_count()
            for name in fast._stages:
                assert ({r: list(s) for r, s in fast._stages[name].samples.items()}
                        == {r: list(s) for r, s in ref._stages[name].samples.items()})

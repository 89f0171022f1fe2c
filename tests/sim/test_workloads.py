"""Workloads: counts, shapes, integrals, trace replay and its scaling, YAML errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.workloads import (
    AZURE_TRACE_FILE,
    TRACE_ENV,
    Burst,
    Poisson,
    Ramp,
    TraceReplay,
    WorkloadError,
    azure_llm_trace,
    find_trace,
    load_workload,
    workload_from_dict,
)


def _counts(w, t0: float, t1: float, bins: int, seed: int = 0) -> np.ndarray:
    times = w.sample(t0, t1, np.random.default_rng(seed)).times
    assert np.all(np.diff(times) >= 0) and (len(times) == 0 or (times[0] >= t0
                                                               and times[-1] < t1))
    return np.histogram(times, bins=bins, range=(t0, t1))[0]


@settings(max_examples=15, deadline=None)
@given(rate=st.floats(0.5, 200.0), seed=st.integers(0, 2**32 - 1))
def test_poisson_counts_have_poisson_mean_and_variance(rate, seed):
    counts = _counts(Poisson(rate), 0.0, 400.0, 400, seed)  # 1 s bins
    # the mean of 400 bins is within 5 standard errors; the dispersion index is ~1
    assert abs(counts.mean() - rate) < 5 * np.sqrt(rate / 400)
    assert 0.6 < counts.var() / rate < 1.5


def test_ramp_shape_and_integral():
    w = Ramp(10.0, 110.0, duration_s=1000.0, start_s=100.0)
    assert w.rate_at(0) == 10 and w.rate_at(600) == pytest.approx(60) and w.rate_at(2000) == 110
    assert w.expected_arrivals(0, 1200) == pytest.approx(10 * 100 + 60 * 1000 + 110 * 100)
    counts = _counts(w, 100.0, 1100.0, 10)  # 100 s bins along the ramp
    expected = np.array([w.expected_arrivals(100 + 100 * i, 200 + 100 * i) for i in range(10)])
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    assert counts[-1] > 5 * counts[0]


def test_burst_shape_and_integral():
    w = Burst(base=10.0, spike=100.0, period_s=100.0, spike_s=20.0, phase_s=30.0)
    assert w.rate_at(35) == 100 and w.rate_at(55) == 10 and w.rate_at(131) == 100
    assert w.expected_arrivals(0, 1000) == pytest.approx(10 * 1000 + 90 * 200)
    assert w.expected_arrivals(35, 45) == pytest.approx(1000)
    assert w.peak_rate(55, 120) == 10 and w.peak_rate(55, 135) == 100
    times = w.sample(0.0, 2000.0, np.random.default_rng(1)).times
    in_spike = np.mod(times - 30.0, 100.0) < 20.0
    assert in_spike.sum() / (20 * 20.0) == pytest.approx(100.0, rel=0.05)  # 20 spikes of 20 s
    assert (~in_spike).sum() / (20 * 80.0) == pytest.approx(10.0, rel=0.08)


@pytest.mark.parametrize("w", [Poisson(7.0), Ramp(1.0, 30.0, 300.0),
                               Burst(2.0, 40.0, 60.0, 15.0)])
def test_expected_arrivals_integrates_rate_at(w):
    grid = np.linspace(0, 500, 200_001)
    numeric = np.trapezoid(w.rates(grid), grid)
    assert w.expected_arrivals(0, 500) == pytest.approx(numeric, rel=1e-3)


# -- trace replay ------------------------------------------------------------------------------
def _write_trace(path: Path, n: int = 400, seconds: float = 200.0) -> np.ndarray:
    rng = np.random.default_rng(5)
    offsets = np.sort(rng.uniform(0, seconds, n))
    base = np.datetime64("2023-11-16T18:17:03.9799600", "ns")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i, off in enumerate(offsets):
        stamp = str(base + np.timedelta64(int(off * 1e9), "ns")).replace("T", " ")
        lines.append(f"{stamp[:-2]},{100 + i},{1 + i % 50}")
    path.write_text("\n".join(lines) + "\n")
    return offsets - offsets[0]


def test_trace_replay_counts_times_and_token_attributes(tmp_path):
    offsets = _write_trace(tmp_path / "t.csv")
    w = TraceReplay.from_csv(tmp_path / "t.csv")
    arr = w.sample(0, 1000, np.random.default_rng(0))
    assert len(arr) == 400
    np.testing.assert_allclose(arr.times, offsets, atol=1e-6)
    assert set(arr.attrs) == {"context_tokens", "generated_tokens"}
    assert arr.attrs["context_tokens"][0] == 100 and arr.attrs["generated_tokens"][49] == 50
    assert w.expected_arrivals(0, 50) == np.sum(offsets < 50)
    assert w.sample(250, 300, np.random.default_rng(0)).times.size == 0  # no loop


def test_trace_time_scaling_compresses_time(tmp_path):
    offsets = _write_trace(tmp_path / "t.csv")
    w = TraceReplay.from_csv(tmp_path / "t.csv", time_scale=0.5)
    arr = w.sample(0, 1000, np.random.default_rng(0))
    np.testing.assert_allclose(arr.times, offsets * 0.5, atol=1e-6)
    # rate over a 10 s window of simulated time = 20 s of trace time, twice as dense
    in_window = np.sum((offsets >= 90) & (offsets < 110))
    assert w.rate_at(50) == pytest.approx(in_window / 10)
    plain = TraceReplay.from_csv(tmp_path / "t.csv")
    assert w.expected_arrivals(0, 50) == plain.expected_arrivals(0, 100)


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.3])
def test_trace_rate_scaling_keeps_the_time_axis(tmp_path, scale):
    offsets = _write_trace(tmp_path / "t.csv", n=2000, seconds=200)
    w = TraceReplay.from_csv(tmp_path / "t.csv", rate_scale=scale, seed=1)
    arr = w.sample(0, 1000, np.random.default_rng(0))
    assert len(arr) == pytest.approx(2000 * scale, rel=0.05)
    assert arr.times[-1] <= offsets[-1] + 200 / 2000 + 1e-9
    assert np.all(np.diff(arr.times) >= 0)
    assert len(arr.attrs["generated_tokens"]) == len(arr)
    again = TraceReplay.from_csv(tmp_path / "t.csv", rate_scale=scale, seed=1)
    np.testing.assert_array_equal(again.times, w.times)  # deterministic


def test_trace_loop_repeats_with_its_period(tmp_path):
    _write_trace(tmp_path / "t.csv", n=100, seconds=50)
    w = TraceReplay.from_csv(tmp_path / "t.csv", loop=True)
    one = len(w.sample(0, w.period, np.random.default_rng(0)))
    assert one == 100
    assert len(w.sample(0, 3 * w.period, np.random.default_rng(0))) == 300
    assert w.expected_arrivals(w.period, 2 * w.period) == 100


def test_trace_with_numeric_times_and_errors(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("time,tokens\n3.0,5\n1.0,7\n2.0,9\n")
    w = TraceReplay.from_csv(p)
    np.testing.assert_allclose(w.times, [0, 1, 2])
    np.testing.assert_allclose(w.attrs["tokens"], [7, 9, 5])  # sorted with their rows
    bad = tmp_path / "bad.csv"
    bad.write_text("time,x\nnot-a-time,1\n")
    with pytest.raises(WorkloadError, match="neither numbers nor date-times"):
        TraceReplay.from_csv(bad)
    with pytest.raises(WorkloadError, match="cannot read trace"):
        TraceReplay.from_csv(tmp_path / "missing.csv")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("time,x\n1,2\n3\n")
    with pytest.raises(WorkloadError, match="line 3"):
        TraceReplay.from_csv(ragged)


def test_find_trace_uses_env_var(tmp_path, monkeypatch):
    _write_trace(tmp_path / AZURE_TRACE_FILE, n=10)
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    assert find_trace() == tmp_path / AZURE_TRACE_FILE
    assert len(azure_llm_trace().times) == 10
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "nothing-here"))
    assert find_trace() is None
    with pytest.raises(WorkloadError, match=TRACE_ENV):
        azure_llm_trace()


def test_the_real_azure_trace_if_present(monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    if find_trace() is None:
        pytest.skip("Azure LLM trace not available (../shared/data or $SAIR_TRACE)")
    w = azure_llm_trace()
    assert 8000 < len(w.times) < 10_000
    assert 2.0 < len(w.times) / w.times[-1] < 3.2  # ~2.6 req/s over ~57 min
    assert w.attr_means()["context_tokens"] == pytest.approx(2048, rel=0.05)
    assert w.attr_means()["generated_tokens"] == pytest.approx(28, rel=0.1)


# -- YAML ----------------------------------------------------------------------------------------
def test_workloads_from_yaml_mappings(tmp_path):
    assert workload_from_dict({"kind": "poisson", "rate": 5}) == Poisson(5.0)
    assert workload_from_dict({"kind": "ramp", "from": 1, "to": 9, "duration_s": 60}) == \
        Ramp(1.0, 9.0, 60.0)
    b = workload_from_dict({"kind": "burst", "base": 1, "spike": 9, "period_s": 60,
                            "spike_s": 10})
    assert b == Burst(1.0, 9.0, 60.0, 10.0)
    _write_trace(tmp_path / "t.csv", n=20)
    f = tmp_path / "w.yaml"
    f.write_text("kind: trace\npath: t.csv\nrate_scale: 2\n")
    assert len(load_workload(f).times) == pytest.approx(40, abs=1)  # path relative to the YAML


@pytest.mark.parametrize("spec, key", [
    ({"kind": "poisson"}, "workload.rate"),
    ({"kind": "poisson", "rate": -1}, "workload.rate"),
    ({"kind": "poisson", "rate": 1, "burst": 2}, "workload.burst"),
    ({"kind": "ramp", "from": 1, "to": 2, "duration_s": 0}, "workload.duration_s"),
    ({"kind": "burst", "base": 1, "spike": 2, "period_s": 10, "spike_s": 20},
     "workload.spike_s"),
    ({"kind": "wave"}, "workload.kind"),
    ({"kind": "trace", "path": "x.csv", "time_scale": 0}, "workload.time_scale"),
    ([1, 2], "workload"),
])
def test_workload_errors_name_the_key(spec, key):
    with pytest.raises(WorkloadError, match=key.replace(".", r"\.")):
        workload_from_dict(spec)

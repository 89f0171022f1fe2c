"""Metrics sources of the Kubernetes backend: live Ray windows as Contexts, the simulator."""

from __future__ import annotations

import math

import pytest

from sair_ray.backends.metrics import AppWindow, StageWindow, context_from_window
from sair_ray.operator.metrics import MetricsSourceError, SimulatedMetrics
from sair_ray.types import StageAllocation
from tests.factories import pipeline

ALLOC = {"preprocess": StageAllocation(2, 1000, 1024),
         "inference": StageAllocation(1, 2000, 4096, 0.5),
         "postprocess": StageAllocation(1, 1000, 1024)}


def test_window_becomes_a_context() -> None:
    w = AppWindow("imgcls", 0.0, 30.0, stages={
        "preprocess": StageWindow("preprocess", replicas=2, completions=300, p50_ms=40,
                                  p99_ms=90, queue_delay_ms=5, queue=3, util=0.8,
                                  throughput_rps=10),
        "inference": StageWindow("inference", completions=300, p50_ms=5, p99_ms=9,
                                 util=0.1, throughput_rps=10, gpu_util=0.3)},
        arrivals=300, arrival_rate=10, completions=300, errors=2, p50_ms=60, p99_ms=120)
    ctx = context_from_window(w, pipeline(), ALLOC)
    pre, inf, post = ctx.stages
    assert (pre.replicas, pre.queue, pre.util, pre.p99_ms) == (2, 3.0, 0.8, 90.0)
    # the replicas that served (what `util` averages over), apart from those allocated
    assert (pre.serving, inf.serving, post.serving) == (2.0, 0.0, 0.0)
    assert inf.util == pytest.approx(0.6)  # 30 % busy at rate 0.5 = 60 % of its quota
    assert inf.rate == 0.5
    assert (post.throughput_rps, post.p99_ms) == (0.0, 0.0)  # not reported yet: idle
    assert (ctx.time, ctx.arrival_rate, ctx.p99_ms, ctx.errors) == (30.0, 10.0, 120.0, 2)


def test_arrivals_without_completions_mean_unknown_latency() -> None:
    w = AppWindow("imgcls", 0.0, 30.0, arrivals=50, arrival_rate=50 / 30, completions=0)
    ctx = context_from_window(w, pipeline(), ALLOC)
    assert math.isnan(ctx.p99_ms)


def test_simulator_must_model_the_same_stages() -> None:
    with pytest.raises(MetricsSourceError, match=r"has stages \['preprocess', 'inference', "
                                                 r"'postprocess'\].*names \['a', 'b'\]"):
        SimulatedMetrics("image_classification", ("a", "b"), start=0.0)


def test_unknown_profile_is_named() -> None:
    with pytest.raises(MetricsSourceError, match="no shipped profile 'nope'"):
        SimulatedMetrics("nope", ("a",), start=0.0)


def test_simulated_windows_give_the_simulators_own_context() -> None:
    """Through the port (AppWindow -> context_from_window) the dry run sees what the
    simulator backend observes itself (cost aside, which the controller recomputes)."""
    from dataclasses import replace

    from sair_ray.backends.metrics import MetricsSource
    from sair_ray.backends.sim import SimBackend
    from sair_ray.operator.metrics import app_window

    backend = SimBackend("image_classification", {"kind": "burst", "base": 20, "spike": 200,
                                                  "period_s": 300, "spike_s": 60}, seed=3)
    src = SimulatedMetrics("image_classification", backend.pipeline.stage_names, start=0.0)
    assert isinstance(src, MetricsSource)
    for t in range(30, 1801, 30):
        backend.advance_to(t)
        w = backend.window(t - 30, t)
        own = replace(backend.observe(t - 30, t), cost_rate=0.0)
        ported = context_from_window(app_window(w, "image_classification"), backend.pipeline,
                                     own.allocation)
        assert repr(ported) == repr(own)


def test_prometheus_source_reads_serve_metrics_without_ray_client() -> None:
    """`metrics.source: prometheus`: the operator reads Ray Serve's own metrics from an
    allowed Prometheus server. The server here is the labelled stand-in of
    tests/observe/test_prometheus.py (Prometheus's documented query API over two real
    Ray 2.60 agent scrapes of the plain app); stages named apart from their deployments
    are mapped back."""
    from sair_ray.operator.runner import make_metrics
    from sair_ray.operator.spec import AutoscalerSpec, AutoscalerSpecError, OperatorTrust
    from tests.k8s.helpers import autoscaler
    from tests.observe.test_prometheus import AFTER, BEFORE, PromStandIn, serve_http, snap

    pa = autoscaler(application="plain", metrics={"source": "prometheus", "address": "prom",
                             "timeoutSeconds": 30},
                    stages=[{"name": "front", "kind": "cpu", "deployment": "Ingress",
                             "initial": {"replicas": 1, "cpuM": 1000, "memMb": 1024}},
                            {"name": "work", "kind": "cpu",
                             "initial": {"replicas": 1, "cpuM": 1000, "memMb": 1024}}])
    stand_in = PromStandIn(lambda: [snap(BEFORE, 100.0), snap(AFTER, 110.0)])
    with serve_http(stand_in.answer) as addr:
        trust = OperatorTrust.from_flags(metrics_addresses=[f"prom=http://{addr}"])
        spec = AutoscalerSpec.from_object(pa, trust)
        source = make_metrics(spec, start=0.0, allocation={})
        w = source.window(100.0, 110.0)
    assert set(w.stages) == {"front", "work"} and w.stages["front"].name == "front"
    assert (w.stages["front"].arrivals, w.stages["work"].completions) == (23, 20)
    assert (w.arrivals, w.completions, w.errors) == (23, 20, 3)
    # a tenant cannot point the operator at a server of its own choosing
    pa["spec"]["metrics"]["address"] = "http://evil.example:9090"
    with pytest.raises(AutoscalerSpecError, match="not a metrics address this operator"):
        AutoscalerSpec.from_object(pa, trust)
    pa["spec"]["metrics"] = {"source": "prometheus"}
    with pytest.raises(AutoscalerSpecError, match="source 'prometheus'.*--metrics-address"):
        AutoscalerSpec.from_object(pa, trust)

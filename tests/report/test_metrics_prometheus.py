"""End to end: SAIR's metrics reach Prometheus through a real (private, short) Ray node's
metrics export port, under the names docs/operations.md and the Grafana dashboard use."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid

import pytest

from sair_ray.metrics_export import MetricsExporter
from sair_ray.reward import TERMS
from tests.ray_harness import free_port, private_ray
from tests.report.test_metrics_export import _controller

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_metrics_are_scraped_from_ray(tmp_path):
    pytest.importorskip("ray")
    port = free_port()
    app = f"prom-{uuid.uuid4().hex[:8]}"
    with private_ray(1, metrics_export_port=port):
        backend, ctl, mem = _controller(tmp_path)
        # a tag no other test uses: metric objects made earlier in this process (the
        # exporter tests without Ray) flush their records into this node too
        exp = MetricsExporter(app)
        for i in range(1, 11):
            backend.advance_to(i * 30.0)
            exp.record(ctl.tick(i * 30.0), ctl)
        ctl.close()
        mem.close()
        wanted = [("ray_sair_decisions_total", 'source="policy"'),
                  ("ray_sair_policy_calls_total", ""),
                  ("ray_sair_stage_gpu_rate_target", 'stage="inference"'),
                  *((f"ray_sair_reward_{t}", "") for t in TERMS)]
        if ctl.counters.probes:
            wanted.append(("ray_sair_decisions_total", 'source="probe"'))

        def complete(text: str) -> bool:
            # this test's own lines: earlier metric objects of other tests export too
            return all(any(ln.startswith(m + "{") and f'app="{app}"' in ln and tag in ln
                           for ln in text.splitlines()) for m, tag in wanted)

        text, deadline = "", time.monotonic() + 90  # Ray exports every few seconds
        while time.monotonic() < deadline and not complete(text):
            time.sleep(3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue

    def value(metric: str, **tags: str) -> float:
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line
                                                     for k, v in {"app": app,
                                                                  **tags}.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{metric} {tags} not scraped")

    c = ctl.counters
    if c.probes:  # a counter never incremented is not exported at all
        assert value("ray_sair_decisions_total", source="probe") == c.probes
    assert value("ray_sair_decisions_total", source="policy") == 10 - c.probes
    assert value("ray_sair_policy_calls_total") == c.policy_calls
    assert value("ray_sair_policy_latency_ms_count") == c.policy_calls
    assert value("ray_sair_stage_replicas_target", stage="preprocess") >= 1
    assert value("ray_sair_stage_gpu_rate_target", stage="inference") > 0
    assert re.search(r"^ray_sair_reward\{", text, re.M)
    for t in TERMS:  # the last reward's terms, as the controller computed them
        assert value(f"ray_sair_reward_{t}") == pytest.approx(getattr(ctl.last_reward, t))

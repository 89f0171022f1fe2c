"""Load plans from the simulator's workloads, and `sair load` end to end against a real
local HTTP server."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.loadgen import app_bodies, build_plan, workload_from_options
from sair_ray.workloads import Burst, WorkloadError, find_trace
from tests.loadgen.conftest import ServerState

pytestmark = pytest.mark.timeout(60)


def test_burst_plan_is_seeded_and_denser_in_the_spike() -> None:
    w = workload_from_options("burst", base=2, spike=40, period_s=20, spike_s=5,
                              duration_s=40)
    assert isinstance(w, Burst)
    a, b = build_plan(w, 40, seed=1), build_plan(w, 40, seed=1)
    np.testing.assert_array_equal(a.times, b.times)
    t = a.times
    in_spike = ((t % 20) < 5).sum()            # 10 s of spike vs 30 s of base
    assert in_spike > 3 * (len(t) - in_spike)
    assert len(build_plan(w, 40, seed=1, max_requests=7)) == 7


def test_option_errors_name_the_option() -> None:
    with pytest.raises(WorkloadError, match="--from"):
        workload_from_options("ramp", end_rate=5)
    with pytest.raises(WorkloadError, match="patterns: poisson"):
        workload_from_options("sawtooth")
    with pytest.raises(WorkloadError, match="duration"):
        build_plan(workload_from_options("poisson", rate=1), 0)


@pytest.mark.skipif(find_trace() is None, reason="Azure trace CSV not available")
def test_azure_trace_plan_carries_tokens_and_credit() -> None:
    plan = build_plan(workload_from_options("trace", time_scale=0.1), 30, seed=0)
    assert len(plan) > 10 and "Azure Public Dataset" in plan.credit
    bodies = app_bodies("text_generation", plan)
    tokens = [json.loads(bodies(i))["max_new_tokens"] for i in range(len(plan))]
    expected = np.clip(plan.attrs["generated_tokens"], 1, 64).astype(int).tolist()
    assert tokens == expected


def test_sair_load_against_a_url_records_every_request(fresh: ServerState, tmp_path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"hello": 1}')
    out = tmp_path / "res.parquet"
    res = CliRunner().invoke(app, [
        "load", fresh.url + "?delay_ms=20", "--body", str(body), "--rate", "30",
        "--duration", "1.5", "--concurrency", "4", "--out", str(out), "--seed", "2"])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out).to_pydict()
    assert len(rows["status"]) == fresh.received > 20
    assert set(rows["status"]) == {"ok"}
    assert fresh.max_in_flight <= 4
    assert "p99" in res.output and str(out) in res.output.replace("\n", "")


def test_sair_load_rejects_bad_input_with_exit_2(tmp_path) -> None:
    r = CliRunner().invoke(app, ["load", "http://127.0.0.1:1/x"])
    assert r.exit_code == 2 and "--body" in r.output
    r = CliRunner().invoke(app, ["load", "image_classification", "--out",
                                 str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "x.json" in r.output

"""The live soak, short: benchmarks/soak_live.py for half a minute of Poisson load
on image_classification with SAIR attached (a round every 3 s), sampling every 10 s. It
checks that the script measures what it says (every process sampled, the controller
learning each round, the metrics actor filling up, every request answered) and that its
bound holds over this short run; the 10-minute run and its numbers are in docs/reliability.md.
"""

from __future__ import annotations

import math
from types import ModuleType

import pytest

from tests.scripts import load_benchmark

pytest.importorskip("ray.serve")
pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def soak_module() -> ModuleType:
    return load_benchmark("soak_live")


def test_short_live_soak_samples_every_process_and_stays_bounded(tmp_path) -> None:
    soak = soak_module()
    r = soak.soak(minutes=0.5, rate=3.0, interval_s=3.0, sample_s=10.0,
                  http_port=8340, workdir=tmp_path)
    s = r.samples
    # on schedule; the last sample also waits for the requests still in flight
    assert [x.t_min for x in s[:-1]] == pytest.approx([0, 1 / 6, 1 / 3], abs=0.05)
    assert s[-1].t_min >= 0.5 - 0.05
    for proc in soak.PROCS:
        assert all(math.isfinite(getattr(x, f"{proc}_mb")) and getattr(x, f"{proc}_mb") > 20
                   for x in s), proc
    assert len({x.controller_pid for x in s}) == 1
    last = s[-1]
    # every request answered and OK; rounds every 3 s, each remembered a round later
    assert r.summary["requests"] == r.summary["ok"] == last.sent > 60
    assert last.rounds_ok >= 6 and last.rounds_failed == 0
    assert last.memory >= last.rounds_ok - 2
    assert last.records > s[1].records > 0
    assert set(r.growth_mb) == set(soak.PROCS) and r.ok, (r.growth_mb, r.failures)
    assert soak.to_markdown(s).count("\n") == len(s) + 1

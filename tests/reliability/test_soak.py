"""Load and soak, the short version: benchmarks/soak_sim.py for a few simulated
minutes at 10x the profile's rate, rounds every 1 s, a memory cap of 100. The memory
passes its cap over and over, is compacted each time, and neither it, its directory nor
the process's RSS keep growing. The 30-minute run and its numbers: docs/reliability.md.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.scripts import load_benchmark

pytestmark = pytest.mark.timeout(240)


def soak_module() -> ModuleType:
    return load_benchmark("soak_sim")


def test_memory_and_rss_stay_bounded_at_10x_load(tmp_path):
    soak = soak_module()
    samples = soak.soak("image_classification", minutes=6, scale=10, cap=100, interval_s=1.0,
                        retain_s=120.0, workdir=tmp_path)
    assert len(samples) == 6
    last = samples[-1]
    assert last.rounds == 360 and last.requests > 150_000      # 10 x 50 req/s was simulated
    assert last.stored == 359 and last.evicted >= 250           # the cap was hit repeatedly
    assert max(s.experiences for s in samples) <= 100
    # The directory shrinks back at every compaction: bounded by ~cap rows of segments.
    assert max(s.disk_kb for s in samples[2:]) < 1.2 * max(s.disk_kb for s in samples[:2])
    # RSS: flat once warm (first eviction imports and sizes its buffers in minutes 1-2).
    growth = last.rss_mb - samples[2].rss_mb
    assert growth < 25, [s.rss_mb for s in samples]
    assert soak.to_markdown(samples).count("\n") == len(samples) + 1

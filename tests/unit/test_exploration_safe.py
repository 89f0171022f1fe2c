"""exploration.safe: a probe only adds capacity and never restarts a stage's only replica."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sair_ray.config import ValidatorConfig
from sair_ray.exploration import probe
from tests import factories


def test_safe_probes_only_add_capacity():
    p = factories.pipeline()
    cur = {k: replace(a, replicas=2) for k, a in p.initial_allocation().items()}
    rng = np.random.default_rng(0)
    seen_dims = set()
    for _ in range(300):
        (stage, entry), = probe(p, cur, ValidatorConfig(), rng, safe=True).items()
        a = cur[stage]
        assert entry.get("replicas", a.replicas) > a.replicas or "replicas" not in entry
        assert entry.get("cpu_millicores", a.cpu_m) >= a.cpu_m
        assert entry.get("memory_mb", a.mem_mb) >= a.mem_mb
        assert entry.get("rate_ratio", a.rate) >= a.rate
        seen_dims |= set(entry) - {"action"}
    assert seen_dims == {"replicas", "cpu_millicores", "memory_mb", "rate_ratio"}


def test_safe_probes_never_resize_a_single_replica_stage():
    p = factories.pipeline()
    cur = p.initial_allocation()
    assert all(a.replicas == 1 for a in cur.values())
    rng = np.random.default_rng(1)
    fields = set()
    for _ in range(300):
        (_, entry), = probe(p, cur, ValidatorConfig(), rng, safe=True).items()
        fields |= set(entry) - {"action"}
    assert fields == {"replicas", "rate_ratio"}


def test_unsafe_probes_go_both_ways():
    p = factories.pipeline()
    cur = {k: replace(a, replicas=3) for k, a in p.initial_allocation().items()}
    rng = np.random.default_rng(2)
    steps = set()
    for _ in range(300):
        (stage, entry), = probe(p, cur, ValidatorConfig(), rng).items()
        if "replicas" in entry:
            steps.add(entry["replicas"] - cur[stage].replicas)
    assert steps == {-2, -1, 1, 2}

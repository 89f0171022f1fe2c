"""exploration.safe: a probe never takes capacity from a pipeline violating its SLA."""

from __future__ import annotations

import numpy as np

from sair_ray.config import ValidatorConfig
from sair_ray.exploration import probe
from tests import factories


def test_safe_probes_only_add_capacity():
    p = factories.pipeline()
    cur = p.initial_allocation()
    rng = np.random.default_rng(0)
    seen_dims = set()
    for _ in range(300):
        (stage, entry), = probe(p, cur, ValidatorConfig(), rng, only_up=True).items()
        a = cur[stage]
        assert entry.get("replicas", a.replicas) >= a.replicas
        assert entry.get("cpu_millicores", a.cpu_m) >= a.cpu_m
        assert entry.get("memory_mb", a.mem_mb) >= a.mem_mb
        assert entry.get("rate_ratio", a.rate) >= a.rate
        seen_dims |= set(entry) - {"action"}
    assert seen_dims == {"replicas", "cpu_millicores", "memory_mb", "rate_ratio"}

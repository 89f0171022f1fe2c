from __future__ import annotations

import math

import numpy as np
import pytest

from sair_ray.config import SAIRConfig
from sair_ray.cost import CostModel
from sair_ray.embedding import STAGE_FEATURES, phi, phi_dim
from sair_ray.types import StageAllocation
from tests.factories import context, pipeline

V = SAIRConfig().validator


def test_phi_layout_and_values():
    p = pipeline(sla_ms=500)
    alloc = {"preprocess": StageAllocation(4, 2000, 4096), "inference": StageAllocation(
        2, 2000, 4096, 0.5), "postprocess": StageAllocation(1, 1000, 1024)}
    ctx = context(p, p99=750, arrival=30, alloc=alloc, util={"preprocess": 3.0},
                  queue={"preprocess": 1000}, stage_p99={"preprocess": 2000})
    ctx = ctx.__class__(**{**ctx.__dict__, "cost_rate": 5.0})
    v = phi(ctx, p, V, lambda_ref=60, c_max=10)
    assert v.dtype == np.float32 and v.shape == (phi_dim(3),) == (24,)
    assert STAGE_FEATURES == ("replicas", "cpu", "mem", "rate", "util", "queue", "p99")
    assert np.allclose(v[:7], [4 / 8, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    assert v[7 + 3] == 0.5  # inference rate
    assert np.allclose(v[-3:], [0.75, 0.5, 0.5])


def test_phi_survives_nonsense_metrics():
    p = pipeline()
    ctx = context(p, p99=float("nan"), util={"preprocess": float("inf")},
                  queue={"inference": -3})
    v = phi(ctx, p, V, lambda_ref=0.0, c_max=1)
    assert np.all(np.isfinite(v)) and v[-3] == 1.0


def test_cost_billable_vs_effective_and_c_max():
    p = pipeline()
    costs = CostModel(p, SAIRConfig().cost)
    alloc = {"preprocess": StageAllocation(2, 1000, 1024), "inference": StageAllocation(
        1, 2000, 2048, 0.25), "postprocess": StageAllocation(1, 500, 512)}
    cpu_mem = 2 * (0.024 + 0.006) + (2 * 0.024 + 2 * 0.006) + (0.5 * 0.024 + 0.5 * 0.006)
    assert math.isclose(costs.rate(alloc, effective=False), cpu_mem + 3.06)
    assert math.isclose(costs.rate(alloc, effective=True), cpu_mem + 0.25 * 3.06)
    # C_max: 3 stages x 8 replicas x 4 cores = 96 > 64 cores; GPUs 8 > 2; memory 192 GB
    assert math.isclose(costs.max_rate(V), 64 * 0.024 + 192 * 0.006 + 2 * 3.06)


def test_pipeline_spec_errors():
    from sair_ray.types import PipelineSpec, SpecError, StageSpec
    with pytest.raises(SpecError, match="sla_ms must be > 0"):
        PipelineSpec("x", (StageSpec("a"),), sla_ms=0)
    with pytest.raises(SpecError, match="duplicate"):
        PipelineSpec("x", (StageSpec("a"), StageSpec("a")), sla_ms=1)
    with pytest.raises(SpecError, match="cpu_m_min"):
        StageSpec("a", cpu_m_min=500, cpu_m_max=100)
    with pytest.raises(KeyError, match="no stage 'z'"):
        pipeline().stage("z")

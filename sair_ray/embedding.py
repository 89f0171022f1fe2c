"""phi(s): the fixed-order float32 vector used for similarity search (docs/algorithm.md §2).

Layout (stable across versions; memory files store phi as computed, so changing it
invalidates stored neighbourhoods):

    for each stage k, in pipeline order (7 floats):
        n/n_max, cpu/cpu_max, mem/mem_max, r, min(u, 1.5)/1.5,
        log1p(q)/log1p(q_max), min(p99_k/L, 2)/2
    then (3 floats):
        min(l/L, 2)/2, lambda/lambda_ref, c/C_max

so dim = 7 * stages + 3. `n_max`, `cpu_max`, `mem_max` come from the stage's limits,
`q_max` from its `queue_max`, `r` is 1 for CPU stages, `lambda_ref` is the largest arrival
rate seen so far (at least 1) and `C_max` the cost model's `max_rate`.
"""

from __future__ import annotations

import math

import numpy as np

from sair_ray.config import ValidatorConfig
from sair_ray.types import Context, PipelineSpec

STAGE_FEATURES = ("replicas", "cpu", "mem", "rate", "util", "queue", "p99")
GLOBAL_FEATURES = ("e2e_p99", "arrival", "cost")
PHI_VERSION = 1


def phi_dim(n_stages: int) -> int:
    return len(STAGE_FEATURES) * n_stages + len(GLOBAL_FEATURES)


def _finite(x: float, default: float = 0.0) -> float:
    return float(x) if math.isfinite(x) else default


def phi(ctx: Context, pipeline: PipelineSpec, v: ValidatorConfig, *, lambda_ref: float,
        c_max: float) -> np.ndarray:
    sla = pipeline.sla_ms
    out: list[float] = []
    for spec in pipeline.stages:
        o = ctx.stage(spec.name)
        lim = spec.limits(v)
        out += [
            o.replicas / lim.replicas_max,
            o.cpu_m / lim.cpu_m_max,
            o.mem_mb / lim.mem_mb_max,
            o.rate,
            min(max(_finite(o.util), 0.0), 1.5) / 1.5,
            math.log1p(max(_finite(o.queue), 0.0)) / math.log1p(spec.queue_max),
            min(max(_finite(o.p99_ms), 0.0) / sla, 2.0) / 2.0,
        ]
    out += [
        min(max(_finite(ctx.p99_ms, 2 * sla), 0.0) / sla, 2.0) / 2.0,
        max(_finite(ctx.arrival_rate), 0.0) / max(lambda_ref, 1.0),
        max(_finite(ctx.cost_rate), 0.0) / c_max,
    ]
    return np.asarray(out, dtype=np.float32)

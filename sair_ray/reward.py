"""The SAIR reward (docs/algorithm.md §3; paper Eq. 4-7, Algorithm 2).

    R = w_L * R_lat + w_C * R_cost - P_sla + R_pareto + B_pro,   clipped to [-3, 3]

`score` is pure (frontier untouched) so it can be property-tested; `RewardModel.compute`
scores an outcome and then adds it to its load bucket's frontier, as the loop does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sair_ray.config import RewardConfig, ValidatorConfig
from sair_ray.pareto import BucketedFrontiers, ParetoFrontier
from sair_ray.types import Action

EPS = 1e-9
# The terms of R in the order of §3, as named in RewardBreakdown (P_sla is subtracted).
TERMS = ("r_lat", "r_cost", "p_sla", "r_pareto", "b_pro")


@dataclass(frozen=True)
class Outcome:
    """What a round's window measured: end-to-end p99, cost rate in force, arrival rate."""

    latency_ms: float
    cost_rate: float
    arrival_rate: float


@dataclass(frozen=True)
class RewardBreakdown:
    total: float
    r_lat: float
    r_cost: float
    p_sla: float
    r_pareto: float
    b_pro: float
    violation: float
    dominated: bool
    hv_contribution: float
    frontier_distance: float
    z: tuple[float, float]
    bucket: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def capacity_added(action: Action, v: ValidatorConfig) -> float:
    """sum_k up_k: per stage, the scale-up steps normalised by their per-step maxima.

    A stage's up_k adds its replica, CPU and GPU-rate increases (memory is not capacity
    in the paper's sense) and is capped at 1; scale-downs count 0.
    """
    total = 0.0
    for d in action.deltas.values():
        up = (max(0, d.replicas) / v.max_replica_step + max(0, d.cpu_m) / v.max_cpu_step_m
              + max(0.0, d.rate) / v.max_rate_step)
        total += min(1.0, up)
    return total


def _sanitize_latency(latency_ms: float, sla_ms: float) -> float:
    # A window with no completed request has no p99; the observer reports NaN/inf. Treat
    # it as the worst normalised outcome (2L saturates both z_l and the SLA penalty).
    if not math.isfinite(latency_ms) or latency_ms < 0:
        return 2.0 * sla_ms
    return latency_ms


def score(cfg: RewardConfig, frontier: ParetoFrontier, *, outcome: Outcome,
          prev: Outcome | None, v_prev: float, up_sum: float, n_stages: int, sla_ms: float,
          c_max: float, bucket: int = 0) -> RewardBreakdown:
    l_t = _sanitize_latency(outcome.latency_ms, sla_ms)
    c_t = max(0.0, outcome.cost_rate) if math.isfinite(outcome.cost_rate) else c_max
    if prev is None:
        r_lat = r_cost = 0.0
        l_prev = math.inf
    else:
        l_prev = _sanitize_latency(prev.latency_ms, sla_ms)
        c_prev = max(0.0, prev.cost_rate) if math.isfinite(prev.cost_rate) else c_max
        r_lat = _clip((l_prev - l_t) / max(l_prev, EPS), -1.0, 1.0)
        r_cost = _clip(-(c_t - c_prev) / max(c_prev, EPS), -1.0, 1.0)

    v = max(0.0, l_t / sla_ms - 1.0)
    sev = min(v, 1.0)
    p_sla = cfg.kappa * (sev if cfg.penalty == "linear" else sev * sev)

    z = (min(1.0, l_t / (2.0 * sla_ms)), min(1.0, c_t / max(c_max, EPS)))
    verdict = frontier.evaluate(z[0], z[1], cfg.w_L, cfg.w_C)
    if verdict.dominated:
        r_pareto = -0.1 - 0.9 * verdict.distance
    else:
        r_pareto = 0.1 + 0.9 * verdict.hv_contribution

    b_pro = 0.0
    if prev is not None and v_prev > 0 and l_t < l_prev:
        b_pro = cfg.beta * min(v_prev, 1.0) * min(1.0, up_sum / max(n_stages, 1))

    total = _clip(cfg.w_L * r_lat + cfg.w_C * r_cost - p_sla + r_pareto + b_pro, -3.0, 3.0)
    return RewardBreakdown(total, r_lat, r_cost, p_sla, r_pareto, b_pro, v, verdict.dominated,
                           verdict.hv_contribution, verdict.distance, z, bucket)


class RewardModel:
    """Scores each round's outcome and keeps the per-load-bucket Pareto frontiers."""

    def __init__(self, cfg: RewardConfig, *, sla_ms: float, c_max: float,
                 frontiers: BucketedFrontiers | None = None) -> None:
        self.cfg = cfg
        self.sla_ms = sla_ms
        self.c_max = c_max
        self.frontiers = frontiers or BucketedFrontiers(cfg.bucket_base, cfg.global_frontier)

    def compute(self, outcome: Outcome, prev: Outcome | None, *, v_prev: float, up_sum: float,
                n_stages: int) -> RewardBreakdown:
        bucket = self.frontiers.bucket(outcome.arrival_rate)
        front = self.frontiers.frontier(outcome.arrival_rate)
        rb = score(self.cfg, front, outcome=outcome, prev=prev, v_prev=v_prev, up_sum=up_sum,
                   n_stages=n_stages, sla_ms=self.sla_ms, c_max=self.c_max, bucket=bucket)
        front.add(*rb.z)
        return rb

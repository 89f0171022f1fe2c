"""SAIR's own metrics, exported through Ray's metrics API (`ray.util.metrics`).

Ray's metrics agent serves them on each node's metrics export port next to Ray Serve's,
so one Prometheus scrape (and the Grafana dashboard in docs/grafana-dashboard.json) covers
both. Ray prefixes application metrics with `ray_`: `sair_decisions` is scraped as
`ray_sair_decisions_total`. Every metric carries the tag `app`.

`MetricsExporter.record(decision, controller)` is called once per live round (from
`sair_ray.live.loop`). The controller's counters are cumulative and survive in no metric
backend, so the exporter keeps the last snapshot and adds the differences to Ray's
counters. The reward gauges (total and each term of docs/algorithm.md §3) are the controller's
`last_reward`, set in the round that rewarded the previous action.

Outside a Ray worker or driver the `ray.util.metrics` objects accept and drop records, so
the exporter is safe to run anywhere; `factory` lets a test record what would be exported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sair_ray.decision import Decision
from sair_ray.reward import TERMS
from sair_ray.types import StageKind

log = logging.getLogger(__name__)

# Histogram buckets for the policy's latency: an embedded 135M model takes ~1-10 s, a vLLM
# server ~0.1-2 s, a baseline well under 1 ms.
LATENCY_BUCKETS_MS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class _Metric(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


MetricFactory = Callable[[str, str, str, tuple[str, ...], Sequence[float] | None], Any]


def ray_factory(kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                boundaries: Sequence[float] | None) -> Any:
    """A `ray.util.metrics` Counter, Gauge or Histogram."""
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tag_keys)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tag_keys)
    return metrics.Histogram(name, description=description, boundaries=list(boundaries or ()),
                             tag_keys=tag_keys)


@dataclass(frozen=True)
class MetricDef:
    kind: str          # counter | gauge | histogram
    name: str
    description: str
    tags: tuple[str, ...] = ("app",)
    boundaries: tuple[float, ...] | None = None


_TERM_MEANING = {
    "r_lat": "latency improvement R_lat, in [-1, 1]",
    "r_cost": "cost saving R_cost, in [-1, 1]",
    "p_sla": "SLA penalty P_sla (subtracted from R)",
    "r_pareto": "Pareto term R_pareto (> 0: not dominated by its load bucket's frontier)",
    "b_pro": "proactive scale-up bonus B_pro",
}
assert set(_TERM_MEANING) == set(TERMS)

# Every metric SAIR exports; docs/operations.md and the Grafana dashboard list these names.
METRICS: tuple[MetricDef, ...] = (
    MetricDef("counter", "sair_decisions", "Decision rounds, by source (probe or policy).",
              ("app", "source")),
    MetricDef("counter", "sair_actions", "Rounds whose validated action changed the "
              "allocation."),
    MetricDef("counter", "sair_probes", "Forced exploration probes."),
    MetricDef("counter", "sair_policy_calls", "Calls to the policy (the LLM for SAIR)."),
    MetricDef("counter", "sair_policy_failures", "Policy calls that failed or gave no usable "
              "reply (the round holds)."),
    MetricDef("counter", "sair_validator_clamps", "Fields the validator clamped, by stage and "
              "field.", ("app", "stage", "field")),
    MetricDef("counter", "sair_experiences_stored", "Experiences added to memory."),
    MetricDef("counter", "sair_experiences_evicted", "Experiences evicted by the memory cap."),
    MetricDef("counter", "sair_memory_failures", "Experiences lost to a failed memory write."),
    MetricDef("histogram", "sair_policy_latency_ms", "Wall time of one policy decision (ms).",
              boundaries=LATENCY_BUCKETS_MS),
    MetricDef("histogram", "sair_round_ms", "Wall time of one whole round (ms).",
              boundaries=LATENCY_BUCKETS_MS),
    MetricDef("gauge", "sair_reward", "Reward of the last rewarded action "
              "(docs/algorithm.md section 3)."),
    MetricDef("gauge", "sair_reward_mean", "Mean reward since the controller started."),
    *(MetricDef("gauge", f"sair_reward_{t}", f"The last reward's {_TERM_MEANING[t]} "
                "(docs/algorithm.md section 3).") for t in TERMS),
    MetricDef("gauge", "sair_memory_experiences", "Experiences in memory."),
    MetricDef("gauge", "sair_epsilon", "Exploration probability."),
    MetricDef("gauge", "sair_p99_ms", "End-to-end p99 latency SAIR observed this round (ms)."),
    MetricDef("gauge", "sair_sla_ms", "The pipeline's p99 SLA (ms)."),
    MetricDef("gauge", "sair_arrival_rate", "Arrival rate SAIR observed (req/s)."),
    MetricDef("gauge", "sair_cost_rate", "Cost rate of the allocation in force ($/h)."),
    MetricDef("gauge", "sair_stage_replicas_target", "Replicas SAIR set per stage.",
              ("app", "stage")),
    MetricDef("gauge", "sair_stage_cpu_m_target", "Per-replica CPU (millicores) SAIR set.",
              ("app", "stage")),
    MetricDef("gauge", "sair_stage_mem_mb_target", "Per-replica memory (MB) SAIR set.",
              ("app", "stage")),
    MetricDef("gauge", "sair_stage_gpu_rate_target", "GPU rate ratio SAIR set (GPU stages).",
              ("app", "stage")),
)

# Controller.counters fields -> the counter they feed.
_COUNTERS = {"probes": "sair_probes", "policy_calls": "sair_policy_calls",
             "policy_failures": "sair_policy_failures", "stored": "sair_experiences_stored",
             "evicted": "sair_experiences_evicted", "memory_failures": "sair_memory_failures"}
_TARGETS = {"replicas": "sair_stage_replicas_target", "cpu_m": "sair_stage_cpu_m_target",
            "mem_mb": "sair_stage_mem_mb_target"}


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class MetricsExporter:
    """One app's SAIR metrics; `record` once per round."""

    def __init__(self, app: str, factory: MetricFactory = ray_factory) -> None:
        self.app = app
        self.m: dict[str, Any] = {d.name: factory(d.kind, d.name, d.description, d.tags,
                                                  d.boundaries) for d in METRICS}
        self._last: dict[str, float] | None = None  # counters at the previous record
        self._rewarded = 0

    def _tags(self, **extra: str) -> dict[str, str]:
        return {"app": self.app, **extra}

    def _set(self, name: str, value: Any, **tags: str) -> None:
        f = _finite(value)
        if f is not None:  # a NaN gauge would plot as a gap at best, garbage at worst
            self.m[name].set(f, tags=self._tags(**tags))

    def record(self, decision: Decision, controller: Any) -> None:
        """Export one round: `decision` and the controller's counters, memory and epsilon
        after it."""
        d, c = decision, controller.counters
        source = "probe" if d.probed else "policy"
        self.m["sair_decisions"].inc(1, tags=self._tags(source=source))
        if d.acted:
            self.m["sair_actions"].inc(1, tags=self._tags())
        for cl in d.clamps:
            self.m["sair_validator_clamps"].inc(1, tags=self._tags(stage=str(cl.stage),
                                                                   field=str(cl.field)))
        now = {k: float(getattr(c, k)) for k in _COUNTERS}
        # First round after a (re)start: the counters restart at 0 with the controller, so
        # their values are increments already.
        last = self._last or dict.fromkeys(_COUNTERS, 0.0)
        for k, name in _COUNTERS.items():
            if now[k] > last[k]:
                self.m[name].inc(now[k] - last[k], tags=self._tags())
        self._last = now
        if source == "policy" and "decide" in d.timings_ms:
            self.m["sair_policy_latency_ms"].observe(float(d.timings_ms["decide"]),
                                                     tags=self._tags())
        if d.timings_ms:
            self.m["sair_round_ms"].observe(float(sum(d.timings_ms.values())),
                                            tags=self._tags())
        if c.rewarded > self._rewarded:  # this round rewarded the previous action
            rb = controller.last_reward
            self._set("sair_reward", rb.total)
            for t in TERMS:
                self._set(f"sair_reward_{t}", getattr(rb, t))
            self._set("sair_reward_mean", c.mean_reward)
        self._rewarded = c.rewarded
        mem = getattr(controller, "memory", None)
        if mem is not None:
            self._set("sair_memory_experiences", len(mem))
        self._set("sair_epsilon", d.epsilon)
        ctx = d.context
        self._set("sair_p99_ms", ctx.p99_ms)
        self._set("sair_sla_ms", ctx.sla_ms)
        self._set("sair_arrival_rate", ctx.arrival_rate)
        self._set("sair_cost_rate", ctx.cost_rate)
        # the validator's targets: the allocation after this round's action (a no-op round:
        # what was observed)
        for stage, target in d.targets.items():
            for key, name in _TARGETS.items():
                self._set(name, getattr(target, key), stage=stage)
            if ctx.stage(stage).kind is StageKind.GPU:
                self._set("sair_stage_gpu_rate_target", target.rate, stage=stage)


def safe_record(exporter: MetricsExporter | None, decision: Decision,
                controller: Any) -> None:
    """`exporter.record`, never raising: metrics must not stop the control loop."""
    if exporter is None:
        return
    try:
        exporter.record(decision, controller)
    except Exception:
        log.exception("%s: exporting SAIR metrics failed", exporter.app)


def make_exporter(app: str) -> MetricsExporter | None:
    """The Ray exporter for `app`, or None (logged) where Ray is not installed."""
    try:
        import ray.util.metrics  # noqa: F401
    except ImportError:
        log.info("ray is not installed: SAIR metrics are not exported")
        return None
    return MetricsExporter(app)

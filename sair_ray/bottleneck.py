"""Bottleneck analysis: which stage(s) limit the pipeline right now.

Three symptoms per stage, each in [0, 1]:

- utilisation  min(u, 1.5) / 1.5 (GPU stages report u normalised to their rate quota);
- queue        log1p(q) / log1p(q_max), plus queue growth (dq/dt over the stage's
               throughput: the share of arrivals that piles up instead of being served;
               dq of one request counts as none);
- latency      the stage's share of the summed per-stage (p99 + queueing delay).

and a flow check, `deficit`: the share of the work reaching the stage in the window that
it did not pass on, (input - throughput) / input, with input = the pipeline's arrival rate
for the first stage and the previous stage's throughput for the others. Work is conserved
along a chain, so a lasting deficit means the stage is piling up or dropping requests.

A stage is *saturated* when its utilisation or queue says it cannot keep up, and
*overloaded* when it is saturated and also has a deficit of at least `OVERLOAD_DEFICIT`.
Overloaded stages are the bottleneck ("multiple" when there are several): in a chain
the first overloaded stage shields the ones after it, so a downstream stage that still
falls behind the reduced flow it receives is a bottleneck in its own right, even though
its latency share is small next to the upstream queue. With none overloaded, the
highest-scoring saturated stage is named, with saturated stages scoring within `TIE` of
it as "multiple". With nothing saturated but the SLA violated, the stage with the largest
latency share is named; otherwise "none".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sair_ray.types import Context, PipelineSpec

SATURATED_UTIL = 0.85   # above this a queue forms under bursty arrivals (Kingman)
SATURATED_QUEUE = 0.3   # log1p(q)/log1p(q_max); ~7 waiting requests at q_max = 1000
SATURATED_GROWTH = 0.05  # 5 % of throughput piling up per second
TIE = 0.85              # saturated stages within 15 % of the top score are co-bottlenecks
OVERLOAD_DEFICIT = 0.1  # >= 10 % of the input not passed on: backlog or drops, not noise
WEIGHTS = {"util": 0.4, "latency": 0.3, "growth": 0.15, "queue": 0.15}


@dataclass(frozen=True)
class StageSymptoms:
    stage: str
    util: float
    queue: float
    growth: float
    latency_share: float
    score: float
    saturated: bool
    deficit: float = 0.0    # (input - throughput) / input, in [0, 1]


@dataclass(frozen=True)
class BottleneckReport:
    label: str                      # a stage name, "multiple" or "none"
    stages: tuple[str, ...]         # the bottleneck stage(s), empty for "none"
    symptoms: tuple[StageSymptoms, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "stages": list(self.stages), "reason": self.reason,
                "symptoms": [asdict(s) for s in self.symptoms]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BottleneckReport:
        return cls(str(d["label"]), tuple(d["stages"]),
                   tuple(StageSymptoms(**s) for s in d.get("symptoms", ())), str(d["reason"]))


def _f(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def analyse(ctx: Context, pipeline: PipelineSpec, prev: Context | None = None) -> BottleneckReport:
    dt = max(ctx.time - prev.time, 1e-9) if prev is not None else None
    lat = {s.name: max(0.0, _f(s.p99_ms)) + max(0.0, _f(s.queue_delay_ms)) for s in ctx.stages}
    lat_total = sum(lat.values())
    symptoms = []
    inflow = max(_f(ctx.arrival_rate), 0.0)
    for spec in pipeline.stages:
        o = ctx.stage(spec.name)
        util = min(max(_f(o.util), 0.0), 1.5) / 1.5
        queue = math.log1p(max(_f(o.queue), 0.0)) / math.log1p(spec.queue_max)
        growth = 0.0
        if prev is not None and dt is not None:
            # one request more waiting is no growth: at a few requests per window it is
            # one that arrived while every replica was busy, which happens at any
            # utilisation (simulated video_analysis Poisson and ramp, 1 h x 3 seeds: 1-2 %
            # less cost at the same attainment within 0.001)
            dq = _f(o.queue) - _f(prev.stage(spec.name).queue)
            dq = dq if dq > 1.0 else 0.0
            growth = min(1.0, max(0.0, dq / dt / max(_f(o.throughput_rps), 1e-3)))
        out = max(_f(o.throughput_rps), 0.0)
        deficit = min(1.0, max(0.0, (inflow - out) / inflow)) if inflow > 0 else 0.0
        inflow = out
        share = lat[spec.name] / lat_total if lat_total > 0 else 0.0
        score = (WEIGHTS["util"] * util + WEIGHTS["latency"] * share
                 + WEIGHTS["growth"] * growth + WEIGHTS["queue"] * queue)
        saturated = (_f(o.util) >= SATURATED_UTIL or queue >= SATURATED_QUEUE
                     or growth >= SATURATED_GROWTH)
        symptoms.append(StageSymptoms(spec.name, util, queue, growth, share, score, saturated,
                                      deficit))

    sat = sorted((s for s in symptoms if s.saturated), key=lambda s: -s.score)
    over = [s for s in sat if s.deficit >= OVERLOAD_DEFICIT]
    if over:
        names = tuple(s.stage for s in over)
        label = names[0] if len(names) == 1 else "multiple"
        reason = "overloaded: " + ", ".join(
            f"{s.stage} (u={s.util * 1.5:.2f}, queue={s.queue:.2f}, "
            f"passes on {1 - s.deficit:.0%} of its input)" for s in over)
        return BottleneckReport(label, names, tuple(symptoms), reason)
    if sat:
        top = sat[0].score
        names = tuple(s.stage for s in sat if s.score >= TIE * top)
        label = names[0] if len(names) == 1 else "multiple"
        reason = "saturated: " + ", ".join(
            f"{s.stage} (u={s.util * 1.5:.2f}, queue={s.queue:.2f}, growth={s.growth:.2f})"
            for s in sat if s.stage in names)
        return BottleneckReport(label, names, tuple(symptoms), reason)
    if ctx.p99_ms > ctx.sla_ms and symptoms:
        worst = max(symptoms, key=lambda s: s.latency_share)
        return BottleneckReport(worst.stage, (worst.stage,), tuple(symptoms),
                                f"SLA violated; largest latency share {worst.latency_share:.0%}")
    return BottleneckReport("none", (), tuple(symptoms), "no stage saturated, SLA met")

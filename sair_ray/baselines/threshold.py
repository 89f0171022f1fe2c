"""Threshold: rule-based per-stage p99 latency thresholds (paper 6.1).

Per stage, with its latency taken as processing p99 plus mean queueing delay (the
processing time alone does not grow with load, so it would never trigger):

    latency > threshold                         -> +1 replica
    latency < down_ratio * threshold            -> -1 replica
    at most one change per stage per `cooldown_s`

Paper setting: 100 ms for CPU stages, 200 ms for GPU stages, 60 s cooldown; the paper
swept the thresholds per application, so they are constructor parameters.
"""

from __future__ import annotations

import math

from sair_ray.baselines._common import limits
from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.proposal import hold, replicas_to
from sair_ray.types import StageKind


class Threshold:
    name = "threshold"

    def __init__(self, cpu_p99_ms: float = 100.0, gpu_p99_ms: float = 200.0,
                 cooldown_s: float = 60.0, down_ratio: float = 0.5, step: int = 1,
                 validator: ValidatorConfig | None = None) -> None:
        if not (cpu_p99_ms > 0 and gpu_p99_ms > 0):
            raise ValueError("thresholds must be > 0")
        if not 0 <= down_ratio < 1:
            raise ValueError(f"down_ratio must be in [0, 1) (got {down_ratio})")
        if step < 1:
            raise ValueError(f"step must be >= 1 (got {step})")
        self.cpu_p99_ms, self.gpu_p99_ms = cpu_p99_ms, gpu_p99_ms
        self.cooldown_s, self.down_ratio, self.step = cooldown_s, down_ratio, step
        self.validator = validator
        self._last_change: dict[str, float] = {}

    def threshold(self, kind: StageKind) -> float:
        return self.gpu_p99_ms if kind is StageKind.GPU else self.cpu_p99_ms

    def decide(self, request: PolicyRequest) -> PolicyReply:
        lim = limits(request.pipeline, self.validator)
        now = request.now
        proposal, notes = {}, []
        for obs in request.context.stages:
            thr = self.threshold(obs.kind)
            latency = obs.p99_ms + obs.queue_delay_ms
            last = self._last_change.get(obs.name, -math.inf)
            if now - last < self.cooldown_s:
                proposal[obs.name] = hold()
                notes.append(f"{obs.name}: cooldown")
                continue
            lo, hi = lim[obs.name].replicas_min, lim[obs.name].replicas_max
            target = obs.replicas
            if latency > thr:
                target = min(hi, obs.replicas + self.step)
            elif latency < self.down_ratio * thr:
                target = max(lo, obs.replicas - self.step)
            if target != obs.replicas:
                self._last_change[obs.name] = now
            proposal[obs.name] = replicas_to(target, obs.replicas)
            notes.append(f"{obs.name}: {latency:.0f} ms vs {thr:.0f} ms -> {target}")
        return PolicyReply(proposal=proposal, rationale="threshold: " + "; ".join(notes))

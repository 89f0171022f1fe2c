"""Ray Serve's default autoscaling policy (`replica_queue_length_autoscaling_policy`).

Transcribed from ray-project/ray `python/ray/serve/autoscaling_policy.py` (Ray 2.60):

    desired  = current * (total_ongoing / (target_ongoing_requests * current))
             = total_ongoing / target_ongoing_requests
    scaled   = ceil(current + factor * (desired - current))   (upscaling_factor when going
               up, downscaling_factor when going down; if a scale-down is stuck at
               `current` because of the factor, take one replica off)
    delay    = a scale-up (down) happens only once the wish to scale up (down) has lasted
               `upscale_delay_s` (`downscale_delay_s`) without interruption
    bounds   = [min_replicas, max_replicas]

Defaults as in Ray: target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s 600,
factors 1. Ray averages ongoing requests (queued + running) over `look_back_period_s`
(30 s); here they come from the observation window by Little's law,
ongoing = throughput * (queueing delay + processing time), using the p50 processing
time as the context of docs/algorithm.md §2 has no mean, and never less than the queue left
at the end of the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sair_ray.baselines._common import clamp, limits
from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.proposal import replicas_to
from sair_ray.types import StageObservation


@dataclass
class _DelayState:
    counter: int = 0                 # > 0: consecutive scale-up wishes, < 0: scale-down
    since: float | None = None       # when the current run of wishes began


def ongoing_requests(obs: StageObservation) -> float:
    little = obs.throughput_rps * (obs.queue_delay_ms + obs.p50_ms) / 1000.0
    return max(little, obs.queue)


def scaled_replicas(desired: float, current: int, up_factor: float, down_factor: float) -> int:
    """Ray's `_apply_scaling_factors`."""
    if current == 0:
        return math.ceil(desired)
    delta = desired - current
    factor = up_factor if delta > 0 else down_factor
    scaled = math.ceil(current + factor * delta)
    if math.ceil(desired) < current and scaled == current:
        scaled -= 1
    return scaled


class RayServeDefault:
    name = "ray_serve"

    def __init__(self, target_ongoing_requests: float = 2.0, upscale_delay_s: float = 30.0,
                 downscale_delay_s: float = 600.0, upscaling_factor: float = 1.0,
                 downscaling_factor: float = 1.0,
                 validator: ValidatorConfig | None = None) -> None:
        if not target_ongoing_requests > 0:
            raise ValueError("target_ongoing_requests must be > 0")
        if not (upscaling_factor > 0 and downscaling_factor > 0):
            raise ValueError("scaling factors must be > 0")
        self.target = target_ongoing_requests
        self.upscale_delay_s, self.downscale_delay_s = upscale_delay_s, downscale_delay_s
        self.up_factor, self.down_factor = upscaling_factor, downscaling_factor
        self.validator = validator
        self._state: dict[str, _DelayState] = {}

    def decide(self, request: PolicyRequest) -> PolicyReply:
        lim = limits(request.pipeline, self.validator)
        proposal, notes = {}, []
        for obs in request.context.stages:
            current = obs.replicas
            ongoing = ongoing_requests(obs)
            desired = ongoing / self.target if current > 0 else float(current)
            scaled = scaled_replicas(desired, current, self.up_factor, self.down_factor)
            decision = self._delay(obs.name, max(0, scaled), current, request.now)
            decision = clamp(decision, lim[obs.name].replicas_min, lim[obs.name].replicas_max)
            proposal[obs.name] = replicas_to(decision, current)
            notes.append(f"{obs.name}: ongoing {ongoing:.1f} -> {scaled} (now {decision})")
        return PolicyReply(proposal=proposal, rationale="ray_serve: " + "; ".join(notes))

    def _delay(self, stage: str, desired: int, current: int, now: float) -> int:
        """Ray's `_apply_delay_logic`, with time measured from the first wish."""
        s = self._state.setdefault(stage, _DelayState())
        eps = 1e-6
        if desired > current:
            if s.counter < 0:
                s.counter, s.since = 0, None
            s.counter += 1
            if s.since is None:
                s.since = now
            if now - s.since + eps >= self.upscale_delay_s:
                s.counter, s.since = 0, None
                return desired
        elif desired < current:
            if s.counter > 0:
                s.counter, s.since = 0, None
            s.counter -= 1
            desired = max(1, desired)
            if s.since is None:
                s.since = now
            if now - s.since + eps >= self.downscale_delay_s:
                s.counter, s.since = 0, None
                return desired
        else:
            s.counter, s.since = 0, None
        return current

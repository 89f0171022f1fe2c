"""HPA-CPU: the Kubernetes Horizontal Pod Autoscaler's algorithm on per-stage utilisation.

Per stage (kube-controller-manager's replica calculator and behaviours):

    ratio   = util / target
    desired = current                        if |ratio - 1| <= tolerance
            = ceil(current * ratio)          otherwise
    then stabilisation: the recommendation is the minimum of the recommendations of the
    last `scale_up_stabilization_s` (default 0: scale up at once) when above the current
    count, and the maximum of those of the last `scale_down_stabilization_s` when below.

CPU stages use CPU seconds per allocated core, GPU stages their rate-normalised GPU
utilisation (docs/algorithm.md §2). The paper's setting is a 70 % target with a 60 s
scale-down window (Kubernetes' own default window is 300 s); the tolerance is Kubernetes'
0.1. HPA's per-period rate limits are left to the validator's step limits.
"""

from __future__ import annotations

import math
from collections import deque

from sair_ray.baselines._common import clamp, limits
from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.proposal import replicas_to


def hpa_desired(current: int, util: float, target: float, tolerance: float) -> int:
    """Kubernetes' formula: ceil(current * util / target) outside the tolerance band."""
    ratio = util / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(current * ratio - 1e-9)


class HPA:
    name = "hpa"

    def __init__(self, target: float = 0.7, tolerance: float = 0.1,
                 scale_down_stabilization_s: float = 60.0,
                 scale_up_stabilization_s: float = 0.0,
                 validator: ValidatorConfig | None = None) -> None:
        if not target > 0:
            raise ValueError(f"target must be > 0 (got {target})")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 (got {tolerance})")
        self.target, self.tolerance = target, tolerance
        self.down_window, self.up_window = scale_down_stabilization_s, scale_up_stabilization_s
        self.validator = validator
        self._recs: dict[str, deque[tuple[float, int]]] = {}

    def decide(self, request: PolicyRequest) -> PolicyReply:
        lim = limits(request.pipeline, self.validator)
        now = request.now
        proposal, notes = {}, []
        for obs in request.context.stages:
            lo, hi = lim[obs.name].replicas_min, lim[obs.name].replicas_max
            raw = clamp(hpa_desired(obs.replicas, obs.util, self.target, self.tolerance), lo, hi)
            final = self._stabilise(obs.name, raw, obs.replicas, now)
            proposal[obs.name] = replicas_to(final, obs.replicas)
            notes.append(f"{obs.name}: util {obs.util:.2f} -> {raw} (stabilised {final})")
        return PolicyReply(proposal=proposal, rationale="hpa: " + "; ".join(notes))

    def _stabilise(self, stage: str, desired: int, current: int, now: float) -> int:
        recs = self._recs.setdefault(stage, deque())
        horizon = max(self.down_window, self.up_window)
        while recs and recs[0][0] <= now - horizon:
            recs.popleft()
        up, down = desired, desired
        for t, r in recs:
            if t > now - self.up_window:
                up = min(up, r)
            if t > now - self.down_window:
                down = max(down, r)
        recs.append((now, desired))
        out = current
        if out < up:
            out = up
        if out > down:
            out = down
        return out

"""Static: a fixed allocation of one replica per stage (paper 6.1), nothing else changes."""

from __future__ import annotations

from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.proposal import replicas_to


class Static:
    name = "static"

    def __init__(self, replicas: int = 1) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1 (got {replicas})")
        self.replicas = replicas

    def decide(self, request: PolicyRequest) -> PolicyReply:
        proposal = {s.name: replicas_to(self.replicas, s.replicas)
                    for s in request.context.stages}
        return PolicyReply(proposal=proposal,
                           rationale=f"static: {self.replicas} replica(s) per stage")

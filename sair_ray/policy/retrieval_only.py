"""SAIR without the LLM: the same candidates the LLM is offered, picked by a fixed rule.

Exists to measure what the LLM adds: same memory, same surprisal retrieval, same
exploration and validator as SAIR. The decision is the best retrieved episode's action
(highest similarity x reward), re-applied as a delta from the current allocation: deltas,
not absolute targets, because retrieval matches states whose allocation is close but
rarely equal, and "one more replica of the bottleneck" transfers where "exactly 3
replicas" does not. With no positive episode retrieved (a cold memory), it relieves the
named bottleneck, trims an over-provisioned stage or holds (`candidates.default_choice`).
"""

from __future__ import annotations

from sair_ray.config import ValidatorConfig
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.policy.candidates import build, default_choice


class RetrievalOnlyPolicy:
    name = "sair-retrieval"

    def __init__(self, validator: ValidatorConfig) -> None:
        self.validator = validator

    def decide(self, request: PolicyRequest) -> PolicyReply:
        pick = default_choice(build(request, self.validator))
        return PolicyReply(proposal=pick.proposal, rationale=f"retrieval-only: {pick.label}")

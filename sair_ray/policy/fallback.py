"""A safe policy for the rounds the LLM cannot decide (late, down, unparseable).

When the primary policy's reply carries an error (late, endpoint down, unparseable), the
fallback decides that round instead. The reply keeps the primary's error, so the round
is still counted as an LLM failure and logged as one; its rationale says which rule
acted. When the LLM answers again, its replies are used again: there is no state to
recover. The validator still checks whatever the fallback proposes.
"""

from __future__ import annotations

from dataclasses import replace

from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest


class WithFallback:
    def __init__(self, primary: Policy, fallback: Policy) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name

    def decide(self, request: PolicyRequest) -> PolicyReply:
        reply = self.primary.decide(request)
        if not reply.error:
            return reply
        fb = self.fallback.decide(request)
        return replace(reply, proposal=fb.proposal,
                       rationale=f"fallback {self.fallback.name} (LLM failed): {fb.rationale}")

    def close(self) -> None:
        close = getattr(self.primary, "close", None)
        if close is not None:
            close()

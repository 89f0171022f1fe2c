"""SAIR without the LLM: replay the best retrieved episode's action, adapted to now.

Exists to measure what the LLM adds (issue 4): same memory, same surprisal retrieval, same
exploration and validator as SAIR, but the decision is "the retrieved episode with the
highest similarity x reward, its action re-applied as a delta from the current
allocation". Deltas, not absolute targets, because retrieval matches states whose
allocation is close but rarely equal, and "one more replica of the bottleneck" transfers
where "exactly 3 replicas" does not. With no episode (empty memory) it holds still; the
exploration probes fill the memory.
"""

from __future__ import annotations

from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.policy.prompt import target_json


class RetrievalOnlyPolicy:
    name = "sair-retrieval"

    def decide(self, request: PolicyRequest) -> PolicyReply:
        eps = [r for r in request.episodes if r.experience.reward > 0]
        if not eps:
            return PolicyReply(proposal={}, rationale="no positive episode retrieved; hold")
        best = max(eps, key=lambda r: (r.similarity * r.experience.reward, r.experience.reward))
        action = best.experience.action
        proposal = {s.name: target_json(s.kind, s.allocation, action.get(s.name, {}))
                    for s in request.context.stages}
        return PolicyReply(
            proposal=proposal,
            rationale=(f"replay episode {best.experience.id[:8]} (reward "
                       f"{best.experience.reward:+.2f}, similarity {best.similarity:.2f})"))

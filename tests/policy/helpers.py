"""Builders for policy tests: real requests with real retrieved experiences."""

from __future__ import annotations

from sair_ray.bottleneck import analyse
from sair_ray.policy.base import PolicyRequest
from sair_ray.retrieval import Retrieved
from sair_ray.types import ClusterResources, Context, Experience, PipelineSpec
from tests import factories


def experience(ctx: Context, action: dict, reward: float, eid: str = "e0") -> Experience:
    return Experience(id=eid, time=ctx.time, app=ctx.app, phi=[0.0], context=ctx.to_dict(),
                      action=action, reward=reward, latency_ms=ctx.p99_ms, cost_rate=1.0)


def retrieved(exp: Experience, similarity: float = 0.9) -> Retrieved:
    return Retrieved(row=0, experience=exp, similarity=similarity, surprisal=0.1, gain=1.0)


def request(p: PipelineSpec | None = None, ctx: Context | None = None,
            episodes: tuple[Retrieved, ...] = (),
            history: tuple[Context, ...] = ()) -> PolicyRequest:
    p = p or factories.pipeline()
    ctx = ctx or factories.context(p)
    return PolicyRequest(now=ctx.time, context=ctx, pipeline=p,
                         free=ClusterResources(32, 65536, 1), bottleneck=analyse(ctx, p),
                         episodes=episodes, history=history)


def overloaded(p: PipelineSpec | None = None, stage: str = "preprocess") -> Context:
    """`stage` saturated (util 0.99, a long queue) and the SLA violated."""
    p = p or factories.pipeline()
    return factories.context(p, p99=4 * p.sla_ms, util={stage: 0.99},
                             queue={stage: 200.0}, stage_p99={stage: 400.0})

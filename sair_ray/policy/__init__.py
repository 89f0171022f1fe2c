"""Policies: whatever proposes the next allocation (the LLM, probes, baselines).

`make_policy(name, cfg, pipeline=...)` is the one way the bench, the live attach actor and
the operator build a policy by name:

| name | policy |
|---|---|
| `sair` | the LLM policy of SPEC 6 (`llm.LLMPolicy`), behind `policy.fallback` |
| `sair-retrieval` | SAIR with the LLM replaced by "replay the best retrieved episode" |
| any of `sair_ray.baselines.BASELINES` | that baseline (static, hpa, vpa, threshold, ...) |
"""

from __future__ import annotations

from typing import Any

from sair_ray.config import SAIRConfig
from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest
from sair_ray.types import PipelineSpec

SAIR_POLICIES = ("sair", "sair-retrieval")


def make_policy(name: str, cfg: SAIRConfig, *, pipeline: PipelineSpec, **params: Any) -> Policy:
    """A policy by name; `params` go to the baseline's constructor (e.g. `profile` for
    vpa, `workload` for the oracle) or to `LLMPolicy` (`endpoint`, `threads`)."""
    if name == "sair":
        from sair_ray.policy.fallback import WithFallback
        from sair_ray.policy.llm import LLMPolicy
        llm = LLMPolicy(cfg, pipeline, **params)
        if cfg.policy.fallback == "hold":
            return llm
        return WithFallback(llm, make_policy(cfg.policy.fallback, cfg, pipeline=pipeline))
    if name == "sair-retrieval":
        from sair_ray.policy.retrieval_only import RetrievalOnlyPolicy
        return RetrievalOnlyPolicy(cfg.validator)
    from sair_ray.baselines import BASELINES, make_baseline
    try:
        return make_baseline(name, **({"validator": cfg.validator} if name != "static" else {}),
                             **params)
    except ValueError:
        raise ValueError(f"unknown policy {name!r}; choose one of "
                         f"{', '.join(SAIR_POLICIES + BASELINES)}") from None


__all__ = ["SAIR_POLICIES", "Policy", "PolicyReply", "PolicyRequest", "make_policy"]

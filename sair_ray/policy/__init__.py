"""Policies: whatever proposes the next allocation (the LLM, probes, baselines)."""

from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest

__all__ = ["Policy", "PolicyReply", "PolicyRequest"]

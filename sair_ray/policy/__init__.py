"""Policies: whatever proposes the next allocation (the LLM, probes, baselines).

This package holds SAIR's own policies (the LLM policy of docs/algorithm.md §6 in `llm`,
its fallback, the retrieval-only selector) and the `Policy` port they and the baselines
implement. `sair_ray.registry.make_policy` builds any of them by name.
"""

from __future__ import annotations

from sair_ray.policy.base import Policy, PolicyReply, PolicyRequest

__all__ = ["Policy", "PolicyReply", "PolicyRequest"]

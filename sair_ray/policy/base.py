"""The Policy protocol shared by SAIR's LLM policy and every baseline.

A policy proposes *absolute targets* in the JSON shape of docs/algorithm.md §6, built with
`sair_ray.proposal` (e.g. ``{"preprocess": scale_replicas(3)}``); the validator turns that
into a safe delta. Policies never actuate anything themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sair_ray.bottleneck import BottleneckReport
from sair_ray.types import ClusterResources, Context, PipelineSpec

if TYPE_CHECKING:  # the retrieval imports the memory (FAISS); policies only read its results
    from sair_ray.retrieval import Retrieved


@dataclass(frozen=True)
class PolicyRequest:
    now: float
    context: Context
    pipeline: PipelineSpec
    free: ClusterResources
    bottleneck: BottleneckReport | None = None
    episodes: Sequence[Retrieved] = field(default_factory=tuple)  # in curriculum order
    history: Sequence[Context] = field(default_factory=tuple)  # earlier contexts, oldest first


@dataclass(frozen=True)
class PolicyReply:
    proposal: Any                  # JSON-ish absolute targets; anything, the validator copes
    rationale: str = ""
    raw: str = ""                  # the unparsed reply (LLM policies)
    error: str = ""                # why the reply is a no-op, if it is one
    prompt_chars: int = 0          # size of the prompt sent (LLM policies)


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(self, request: PolicyRequest) -> PolicyReply: ...

"""The proposal vocabulary (docs/algorithm.md §6): the JSON a policy answers with, built here.

A proposal maps stage names to entries of absolute targets, e.g.
``{"preprocess": {"action": "scale_replicas", "replicas": 3}}``. The validator
(`sair_ray.validator`) reads exactly the keys and verbs defined below and nothing else;
policies, baselines and exploration probes build their entries with these constructors, so
the schema is spelled once.
"""

from __future__ import annotations

from typing import Any

Entry = dict[str, Any]      # one stage's targets
Proposal = dict[str, Entry]  # stage name -> entry

ACTION = "action"            # the verb key of an entry
REPLICAS = "replicas"
CPU = "cpu_millicores"
MEM = "memory_mb"
RATE = "rate_ratio"

# JSON field of each action dimension (StageDelta / StageAllocation attribute -> key).
FIELDS = {"replicas": REPLICAS, "cpu_m": CPU, "mem_mb": MEM, "rate": RATE}
# Each verb and the dimensions it touches.
VERBS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "scale_replicas": frozenset({"replicas"}),
    "scale_resources": frozenset({"cpu_m", "mem_mb"}),
    "scale_both": frozenset({"replicas", "cpu_m", "mem_mb"}),
    "adjust_rate": frozenset({"rate"}),
}


def hold() -> Entry:
    """Leave the stage as it is."""
    return {ACTION: "none"}


def scale_replicas(n: Any) -> Entry:
    return {ACTION: "scale_replicas", REPLICAS: n}


def replicas_to(n: int, current: int) -> Entry:
    """`n` replicas, or `hold()` when the stage has them already."""
    return hold() if n == current else scale_replicas(int(n))


def resize(cpu_m: Any = None, mem_mb: Any = None) -> Entry:
    """Per-replica CPU (millicores) and/or memory (MB); a dimension left None is not
    touched."""
    out: Entry = {ACTION: "scale_resources"}
    if cpu_m is not None:
        out[CPU] = cpu_m
    if mem_mb is not None:
        out[MEM] = mem_mb
    return out


def scale_both(replicas: Any, cpu_m: Any, mem_mb: Any) -> Entry:
    return {ACTION: "scale_both", REPLICAS: replicas, CPU: cpu_m, MEM: mem_mb}


def set_rate(r: Any) -> Entry:
    """A GPU stage's rate ratio."""
    return {ACTION: "adjust_rate", RATE: r}


def targets(replicas: Any = None, rate: Any = None) -> Entry:
    """Replicas and rate at once, without a verb: no verb covers both, so the validator
    takes the dimensions from the fields present (docs/algorithm.md §7 step 1)."""
    out: Entry = {}
    if replicas is not None:
        out[REPLICAS] = replicas
    if rate is not None:
        out[RATE] = rate
    return out


def verb(entry: Any) -> Any:
    """An entry's verb (None if it has none or is not an entry)."""
    return entry.get(ACTION) if isinstance(entry, dict) else None


def holds(entry: Any) -> bool:
    return verb(entry) == "none"

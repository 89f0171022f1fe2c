"""The values a metrics window query returns (see the package docstring for meanings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

NAN = float("nan")


@dataclass(frozen=True)
class StageWindow:
    """One stage (Serve deployment) over one window."""

    name: str
    replicas: int = 0
    arrivals: int = 0
    completions: int = 0
    errors: int = 0
    p50_ms: float = NAN
    p99_ms: float = NAN
    queue_delay_ms: float = NAN
    queue: int = 0
    ongoing: int = 0
    util: float = NAN
    throughput_rps: float = 0.0
    gpu_util: float | None = None


@dataclass(frozen=True)
class AppWindow:
    """A whole application over one window: ingress (end-to-end) numbers plus every stage."""

    app: str
    start: float
    end: float
    stages: dict[str, StageWindow] = field(default_factory=dict)
    arrivals: int = 0
    arrival_rate: float = 0.0
    completions: int = 0
    errors: int = 0
    p50_ms: float = NAN
    p95_ms: float = NAN
    p99_ms: float = NAN
    in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN becomes None."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""Per-app baseline settings chosen by the target sweep (`sair bench --sweep`).

The paper swept HPA's CPU target and the threshold policy's p99 thresholds per application
and kept the best; `sair_ray.bench.sweep` does the same on a tuning seed that the
evaluation grid does not use, and writes the winners to its output directory as
`tuned.yaml`. The values below are copied from that file of the committed sweep
(docs/results/sweep/, which also holds every candidate's numbers and the command); the
grid applies them unless run with `--untuned`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# app -> baseline -> constructor keyword -> value
TunedSettings = dict[str, dict[str, dict[str, float]]]

# from docs/results/sweep/tuned.yaml (`sair bench --sweep --hours 1 --workers 2
# --out docs/results/sweep`, tuning seed 1000)
TUNED: TunedSettings = {
    "image_classification": {
        "hpa": {"target": 0.5},
        "threshold": {"cpu_p99_ms": 50.0, "gpu_p99_ms": 100.0},
    },
    "nlp_analysis": {
        "hpa": {"target": 0.5},
        "threshold": {"cpu_p99_ms": 25.0, "gpu_p99_ms": 25.0},
    },
    "text_generation": {
        "hpa": {"target": 0.5},
        "threshold": {"cpu_p99_ms": 500.0, "gpu_p99_ms": 500.0},
    },
    "video_analysis": {
        "hpa": {"target": 0.5},
        "threshold": {"cpu_p99_ms": 2000.0, "gpu_p99_ms": 2000.0},
    },
}


def load_tuned(path: str | Path) -> TunedSettings:
    """Read a `tuned.yaml` written by the sweep; errors name the file and the entry."""
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read tuned settings {p}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping app -> method -> settings")
    out: TunedSettings = {}
    for app, methods in data.items():
        if not isinstance(methods, dict):
            raise ValueError(f"{p}: {app}: expected a mapping method -> settings")
        for method, settings in methods.items():
            if not isinstance(settings, dict) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool)
                    for v in settings.values()):
                raise ValueError(f"{p}: {app}.{method}: expected a mapping name -> number")
            out.setdefault(str(app), {})[str(method)] = {str(k): float(v)
                                                         for k, v in settings.items()}
    return out

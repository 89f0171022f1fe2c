"""Request bodies for `sair load`: a fixed JSON file, or the app's example requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sair_ray.loadgen.plan import LoadPlan

VARIANTS = 8  # distinct example bodies cycled through (built once: images take ~0.3 s)


def file_body(path: str | Path) -> Callable[[int], bytes]:
    """The same body for every request, read once; must be JSON."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read body file {p}: {e.strerror or e}") from None
    try:
        json.loads(raw)
    except ValueError as e:
        raise ValueError(f"body file {p} is not JSON: {e}") from None
    return lambda i: raw


def app_bodies(app: str, plan: LoadPlan, variants: int = VARIANTS) -> Callable[[int], bytes]:
    """Example bodies of `app` (serve_apps.payloads), cycled. For text_generation under a
    trace with generated-token counts, each request asks for its trace row's count
    (clipped to the app's 1..64), so trace replay drives the decoder's work per request."""
    from serve_apps.payloads import example_request

    pool = [json.dumps(example_request(app, seed)).encode() for seed in range(variants)]
    tokens = plan.attrs.get("generated_tokens")
    if app == "text_generation" and tokens is not None:
        bodies = [example_request(app, seed) for seed in range(variants)]
        counts = np.clip(np.asarray(tokens), 1, 64).astype(int)

        def traced(i: int) -> bytes:
            return json.dumps({**bodies[i % variants],
                               "max_new_tokens": int(counts[i])}).encode()

        return traced
    return lambda i: pool[i % len(pool)]

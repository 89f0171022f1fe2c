"""Example request bodies for the four apps (used by `sair load`, tests and the demo).

Light on purpose (numpy + Pillow, no torch), so the load generator can build bodies
without loading any model. Images and clips are synthetic but real encoded files (JPEG,
GIF): the apps' first stages decode them like any upload.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from serve_apps import APPS

_SENTENCES = (
    "Ray Serve scales multi-stage inference pipelines across a cluster.",
    "The preprocessing stage decodes and resizes every uploaded image.",
    "A token bucket limits how fast a replica may launch GPU kernels.",
    "Autoscalers react to queue length, latency and utilisation.",
    "The cat slept on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the central bank raised rates.",
    "Fresh basil and ripe tomatoes make a simple summer salad.",
    "The football match ended in a draw after extra time.",
    "Researchers trained a small language model on code completions.",
    "Heavy rain is expected across the north of the country tomorrow.",
    "Latency percentiles matter more than averages for user experience.",
    "The museum opened a new exhibition of early photography.",
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _synthetic_frame(rng: np.random.Generator, w: int, h: int, shift: float = 0.0
                     ) -> np.ndarray:
    """A smooth colour gradient with a few shapes and mild noise (compresses like a photo)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    img = np.stack([base[c] * 0.5 + 60 * np.sin((xx + shift * (c + 1)) / (w / (2 + c)))
                    + 60 * np.cos(yy / (h / (1 + c))) for c in range(3)], axis=-1)
    for _ in range(4):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.2) * min(w, h)
        mask = (xx - cx - shift) ** 2 + (yy - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def image_request(seed: int = 0, width: int = 2048, height: int = 1536, top_k: int = 5
                  ) -> dict[str, Any]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_synthetic_frame(_rng(seed), width, height)).save(buf, "JPEG", quality=85)
    return {"image_b64": base64.b64encode(buf.getvalue()).decode(), "top_k": top_k}


def nlp_request(seed: int = 0, n_texts: int = 4) -> dict[str, Any]:
    rng = _rng(seed)
    idx = rng.choice(len(_SENTENCES), size=n_texts + 1, replace=False)
    return {"query": _SENTENCES[idx[0]], "texts": [_SENTENCES[i] for i in idx[1:]]}


def text_request(seed: int = 0, max_new_tokens: int = 16) -> dict[str, Any]:
    rng = _rng(seed)
    prompt = " ".join(_SENTENCES[i] for i in rng.choice(len(_SENTENCES), 2, replace=False))
    return {"prompt": f"Summarise: {prompt}", "max_new_tokens": max_new_tokens,
            "seed": seed}


@functools.lru_cache(maxsize=16)
def video_request(seed: int = 0, n_frames: int = 24, width: int = 160, height: int = 120,
                  sample: int = 8) -> dict[str, Any]:
    """An animated GIF of shapes drifting over a gradient, base64-encoded."""
    from PIL import Image

    frames = []
    for i in range(n_frames):
        rng = _rng(seed)  # same scene every frame, shifted: a moving camera
        frames.append(Image.fromarray(_synthetic_frame(rng, width, height, shift=3.0 * i)))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=83, loop=0)
    return {"clip_b64": base64.b64encode(buf.getvalue()).decode(), "frames": sample}


BUILDERS: dict[str, Callable[[int], dict[str, Any]]] = {
    "image_classification": image_request,
    "nlp_analysis": nlp_request,
    "text_generation": text_request,
    "video_analysis": video_request,
}


def example_request(app: str, seed: int = 0) -> dict[str, Any]:
    """A valid request body for `app`; different seeds give different bodies."""
    try:
        return BUILDERS[app](seed)
    except KeyError:
        raise ValueError(f"no example request for app {app!r}; apps: {', '.join(APPS)}"
                         ) from None

"""Video analysis: frame extraction -> per-frame CNN -> temporal aggregation.

    POST /video_analysis  {"clip_b64": "<animated GIF, base64>", "frames": 8}
    -> {"app": ..., "result": {"top_k": [...], "motion": 0.12, "scene_changes": [3],
                               "frame_classes": [...], "total_frames": 24,
                               "sampled": [0, 3, ...]}}

The decode stage decodes the whole clip (every frame, as a video decoder must) and keeps
`frames` evenly spaced ones, resized to 112x112. The frame CNN is a ResNet-10-style
encoder with seeded random weights (real compute, meaningless classes). Aggregation pools
logits over time, measures motion as the mean feature change between sampled frames and
marks scene changes where that change exceeds twice its median.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from serve_apps.serving import BadRequest, PipelineDef, StageDef, entrypoints, torch_device

APP = "video_analysis"
FRAME_SIZE = 112
MAX_FRAMES = 32
MAX_CLIP_BYTES = 50 * 1024 * 1024
MEAN = np.array([0.43, 0.39, 0.38], dtype=np.float32)  # Kinetics statistics
STD = np.array([0.23, 0.22, 0.22], dtype=np.float32)


def validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"clip_b64": "...", "frames": 8}')
    raw = body.get("clip_b64")
    if not isinstance(raw, str) or not raw:
        raise BadRequest("'clip_b64' must be a non-empty base64 string of an animated GIF")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"'clip_b64' is not valid base64: {e}") from None
    if len(data) > MAX_CLIP_BYTES:
        raise BadRequest(f"clip is {len(data)} bytes; at most {MAX_CLIP_BYTES}")
    n = body.get("frames", 8)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_FRAMES:
        raise BadRequest(f"'frames' must be an integer in [1, {MAX_FRAMES}], got {n!r}")
    return {"clip": data, "frames": n}


def decode(payload: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image, ImageSequence

    clip = Image.open(io.BytesIO(payload["clip"]))
    frames = [f.convert("RGB") for f in ImageSequence.Iterator(clip)]
    total = len(frames)
    keep = sorted({int(i) for i in np.linspace(0, total - 1, min(payload["frames"], total))})
    batch = np.stack([
        (np.asarray(frames[i].resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.BILINEAR),
                    dtype=np.float32) / 255.0 - MEAN) / STD for i in keep])
    return {"frames": np.ascontiguousarray(batch.transpose(0, 3, 1, 2)),
            "sampled": keep, "total_frames": total}


def make_decode() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return decode


def make_analyze() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import torch

    from serve_apps.models import FrameCNN, init_seeded

    device = torch_device()
    model = init_seeded(FrameCNN()).to(device)

    @torch.inference_mode()
    def analyze(payload: dict[str, Any]) -> dict[str, Any]:
        feats, logits = model(torch.from_numpy(payload["frames"]).to(device))
        return {"features": feats.float().cpu().numpy(), "logits": logits.float().cpu().numpy(),
                "sampled": payload["sampled"], "total_frames": payload["total_frames"]}

    return analyze


def aggregate(payload: dict[str, Any], top_k: int = 5) -> dict[str, Any]:
    logits, feats = payload["logits"].astype(np.float64), payload["features"]
    mean = logits.mean(0)
    p = np.exp(mean - mean.max())
    p /= p.sum()
    top = np.argsort(-p)[:top_k]
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-9)
    change = 1.0 - (unit[1:] * unit[:-1]).sum(1) if len(unit) > 1 else np.zeros(0)
    cut = 2 * float(np.median(change)) if len(change) else 0.0
    return {"top_k": [{"class": int(i), "prob": round(float(p[i]), 6)} for i in top],
            "motion": round(float(change.mean()) if len(change) else 0.0, 6),
            "scene_changes": [int(i) + 1 for i in np.flatnonzero(change > cut)] if cut else [],
            "frame_classes": [int(c) for c in logits.argmax(1)],
            "total_frames": payload["total_frames"], "sampled": payload["sampled"]}


def make_aggregate() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return aggregate


DEFINITION = PipelineDef(APP, (
    StageDef("decode", make_decode),
    StageDef("analyze", make_analyze, gpu=True),
    StageDef("aggregate", make_aggregate),
), validate)


build_app, run, app = entrypoints(DEFINITION)

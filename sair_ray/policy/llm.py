"""SAIR's policy: an LLM as an in-context RL agent, via DSPy (docs/algorithm.md §6; paper
Appendix I).

The DSPy signature has the paper's three inputs and two outputs. Its input order differs
from the paper's listing on purpose: `constraints` (static for an app) comes first, then
`sampled_episodes`, then `current_input`, so consecutive prompts share the longest
possible prefix and llama.cpp re-evaluates only what changed.

The reply is decoded against a JSON schema built from the pipeline (stage names, verbs,
limits) where the backend supports it (llama.cpp's grammar, vLLM's guided decoding), and
parsed tolerantly otherwise (`parse.parse_reply`). A malformed, late or failed reply is
a no-op `PolicyReply` with `error` set; the controller counts it. Nothing here raises into
the loop.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any

from sair_ray.config import SAIRConfig
from sair_ray.cost import CostModel
from sair_ray.learning import Hints
from sair_ray.policy.base import PolicyReply, PolicyRequest
from sair_ray.policy.candidates import Candidate, build, pick
from sair_ray.policy.lm import Endpoint, LMUnavailable, resolve
from sair_ray.policy.parse import first_object as _first_object
from sair_ray.policy.parse import parse_reply
from sair_ray.policy.prompt import (
    RATIONALE_CHARS,
    changed,
    format_constraints,
    format_current,
    format_episodes,
    free_line,
    output_schema,
)
from sair_ray.policy.rationale import shown
from sair_ray.retrieval import Retrieved
from sair_ray.types import Context, PipelineSpec

log = logging.getLogger(__name__)

class _NotTruncation(logging.Filter):
    """Drops DSPy's warning that a reply reached max_tokens: the caps above are deliberate
    and a cut reply is read from its raw text (`_chosen`), so the warning, repeated for
    every such round, only buried a bench's or a controller's own output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("LM response was truncated")


def _drop_truncation_warnings() -> None:
    lm_log = logging.getLogger("dspy.clients.lm")
    if not any(isinstance(f, _NotTruncation) for f in lm_log.filters):
        lm_log.addFilter(_NotTruncation())


_LABEL_FIELD = re.compile(r'"action"\s*:\s*"([^"]{1,80})"')
MAX_TOKENS = 160  # a full 3-stage action + one sentence is ~90 tokens with the grammar
# A label reply is {"action": <label, <= 10 tokens>, "rationale": <= 60 chars}: ~35 tokens.
# The label comes first and is read from the raw text even when the rest is cut, so the cap
# only bounds how long a small model may ramble in its rationale (at temperature 1 it often
# fills 160 tokens with whitespace the JSON grammar allows, ~2 s on one core).
LABEL_MAX_TOKENS = 48
# Episodes shown to the embedded model (policy.prompt_episodes = 0, "auto"): on 2 CPU cores
# llama.cpp evaluates ~180 prompt tokens/s and an episode is ~90 tokens, so 4 episodes keep
# a decision near 3 s; K = 15 would take ~10 s (docs/benchmarks.md).
EMBEDDED_PROMPT_EPISODES = 4

INSTRUCTIONS = """You are SAIR, the autoscaler of a multi-stage ML inference pipeline. \
Each round you see past scaling episodes with the reward they earned, the pipeline's \
current metrics with a bottleneck analysis, and its constraints. Choose per-stage absolute \
targets that keep p99 latency under the SLA at the lowest cost. Imitate the actions of \
high-reward episodes in similar states, avoid those of low-reward ones, scale the \
bottleneck stage first, and hold (action none) when latency is well under the SLA and \
nothing is saturated."""


def _masked(obj: Any, redact: Any) -> Any:
    """`obj` (JSON-ish) with `redact` applied to every string in it."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {_masked(k, redact): _masked(v, redact) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_masked(v, redact) for v in obj]
    return obj


def _signature(candidates: bool) -> Any:
    """The DSPy signature; with candidates, `action` is a candidate's label, otherwise the
    action object of §6."""
    import dspy

    action: tuple[Any, Any] = (
        (str, dspy.OutputField(desc="the label of one candidate action")) if candidates else
        (dict[str, Any], dspy.OutputField(
            desc="per stage: {action, replicas, cpu_millicores, memory_mb | rate_ratio}")))
    return dspy.make_signature({
        "constraints": (str, dspy.InputField(
            desc="limits, SLA, budget and scaling guidelines of this pipeline")),
        "sampled_episodes": (str, dspy.InputField(
            desc="past episodes (input, prediction, reward), lowest reward first")),
        "current_input": (str, dspy.InputField(
            desc="per-stage metrics of this round, the bottleneck analysis and the "
                 "candidate actions")),
        "action": action,
        "rationale": (str, dspy.OutputField(desc="one short sentence")),
    }, INSTRUCTIONS, signature_name="ScalingDecision")


def _adapter(backend: str, use_schema: bool) -> Any:
    """DSPy's JSON adapter, with the round's schema (`.schema`) in `response_format` when
    the backend decodes against one (llama.cpp takes it inside json_object; vLLM and OpenAI
    as json_schema)."""
    import dspy

    class SchemaJSONAdapter(dspy.JSONAdapter):
        schema: dict[str, Any] | None = None
        last_raw = ""          # the LM's text, verbatim, for the decision log
        last_prompt_chars = 0  # the whole formatted prompt (system + user messages)

        def format(self, signature: Any, demos: Any, inputs: Any) -> Any:
            messages = super().format(signature, demos, inputs)
            self.last_prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
            return messages

        def parse(self, signature: Any, completion: str) -> Any:
            self.last_raw = completion
            return super().parse(signature, completion)

        def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any],
                                     signature: Any) -> None:
            schema = self.schema if use_schema else None
            if schema is None:
                lm_kwargs["response_format"] = {"type": "json_object"}
            elif backend == "llamacpp":
                lm_kwargs["response_format"] = {"type": "json_object", "schema": schema}
            else:
                lm_kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "sair_action", "schema": schema, "strict": False}}

    return SchemaJSONAdapter(use_native_function_calling=False)


class LLMPolicy:
    """The policy of §6 against one OpenAI-compatible endpoint."""

    name = "sair"

    def __init__(self, cfg: SAIRConfig, pipeline: PipelineSpec, *,
                 endpoint: Endpoint | None = None, threads: int | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self._endpoint = endpoint
        self._threads = threads
        self.constraints = format_constraints(
            pipeline, cfg.validator, CostModel(pipeline, cfg.cost).max_rate(cfg.validator))
        self.schema = output_schema(pipeline, cfg.validator)
        self.candidates_only = cfg.policy.decoding == "candidates"
        self._program: Any = None
        self._lm: Any = None
        self._adapter: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sair-llm")
        self._busy = threading.Lock()
        self.last_prompt_chars = 0
        self.last_call_ms = 0.0  # the LM round trip alone, for overhead accounting
        # what the memory's outcome table says this round (docs/algorithm.md §10); the
        # controller sets it before each call when learning is on
        self.learned: Hints | None = None

    # -- lazy set-up: importing dspy and starting llama.cpp cost seconds ----------------
    def _ensure(self) -> None:
        if self._program is not None:
            return
        # DSPy and LiteLLM fetch price lists and model metadata on their own unless told
        # not to; `import sair_ray` has told them (sair_ray/offline.py).
        try:
            import dspy
        except ImportError:
            raise LMUnavailable("DSPy is not installed: pip install 'sair-ray[local-llm]'") \
                from None
        ep = self._endpoint or resolve(self.cfg.policy, threads=self._threads)
        self._endpoint = ep
        # The key goes twice: as api_key, which the OpenAI client requires, and as an explicit
        # per-request header. Request headers take precedence over everything the client
        # stack adds, and the OpenAI SDK otherwise lets an ambient OPENAI_CUSTOM_HEADERS
        # "Authorization" replace the configured key (seen with openai 3.63). LiteLLM masks
        # both in its debug logs; error texts are masked in decide().
        _drop_truncation_warnings()
        self._lm = dspy.LM(f"openai/{ep.model}", api_base=ep.url, api_key=ep.api_key,
                           extra_headers={"Authorization": f"Bearer {ep.api_key}"},
                           temperature=self.cfg.policy.temperature, max_tokens=MAX_TOKENS,
                           cache=False, num_retries=0, engine="litellm",
                           timeout=self.cfg.policy.llm_timeout_s)
        self._adapter = _adapter(self.cfg.policy.backend, ep.supports_schema)
        self._program = dspy.Predict(_signature(self.candidates_only))
        self.warmup()

    def warmup(self) -> None:
        """Evaluate the static prompt prefix (instructions + constraints) once, so llama.cpp
        holds it in its KV cache and the first timed round pays only for what changes.
        Best effort: a failure here shows up again, counted, in the first round."""
        import dspy

        inputs = {"constraints": self.constraints, "sampled_episodes": "", "current_input": ""}
        self._adapter.schema = None
        try:
            with dspy.context(lm=self._lm, adapter=self._adapter, disable_history=True):
                self._program(**inputs, config={"max_tokens": 1})
        except Exception as e:  # the endpoint may be down now and up later
            if e.__class__.__name__ != "AdapterParseError":  # expected: 1 token is no JSON
                log.info("policy LLM warm-up failed (%s); the first round pays the full "
                         "prompt", e.__class__.__name__)

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    def inputs(self, request: PolicyRequest,
               cands: list[Candidate] | None = None) -> dict[str, str]:
        current = [format_current(request.context, request.bottleneck), free_line(request.free)]
        hints = self.learned
        if hints is not None and hints.lines:
            # docs/algorithm.md §10: what the memory's outcomes say about this load
            current += list(hints.lines)
        if cands:
            current.append("Candidate actions (answer with one label):" if self.candidates_only
                           else "Suggested actions:")
            current += [f"- {c.label}: {json.dumps(changed(c.proposal), separators=(',', ':'))}"
                        + (f" ({c.note})" if c.note else "") for c in cands]
        return {"constraints": self.constraints,
                "sampled_episodes": format_episodes([r.experience for r in
                                                     self.prompt_episodes(request.episodes)]),
                "current_input": "\n".join(current)}

    def prompt_episodes(self, episodes: Sequence[Retrieved]) -> list[Retrieved]:
        """The retrieved episodes the prompt shows: all K, or the `policy.prompt_episodes`
        with the highest selection gain, kept in curriculum order."""
        n = self.cfg.policy.prompt_episodes
        if n == 0:  # auto: the embedded CPU model's prompt budget, everything elsewhere
            n = EMBEDDED_PROMPT_EPISODES if self.cfg.policy.backend == "llamacpp" \
                and not self.cfg.policy.url else len(episodes)
        if len(episodes) <= n:
            return list(episodes)
        best = set(sorted(range(len(episodes)), key=lambda i: -episodes[i].gain)[:n])
        return [e for i, e in enumerate(episodes) if i in best]

    def schema_for(self, cands: list[Candidate]) -> dict[str, Any]:
        if not self.candidates_only:
            return self.schema
        return {"type": "object",
                "properties": {"action": {"enum": [c.label for c in cands]},
                               "rationale": {"type": "string",
                                             "maxLength": RATIONALE_CHARS}},
                "required": ["action", "rationale"], "additionalProperties": False}

    def _call(self, inputs: dict[str, str]) -> tuple[Any, str]:
        """One LM call; returns (parsed prediction or None, raw text)."""
        import dspy
        from dspy.utils.exceptions import AdapterParseError

        self._adapter.last_raw = ""
        with dspy.context(lm=self._lm, adapter=self._adapter, disable_history=True):
            try:
                pred = (self._program(**inputs, config={"max_tokens": LABEL_MAX_TOKENS})
                        if self.candidates_only else self._program(**inputs))
            except AdapterParseError as e:
                return None, str(e.lm_response or self._adapter.last_raw or "")
        return pred, self._adapter.last_raw

    def decide(self, request: PolicyRequest) -> PolicyReply:
        reply = self._decide(request)
        ep = self._endpoint
        if ep is None or not ep.secret:
            return reply
        # Everything in a reply ends up in the decision log and the controller's log lines;
        # none of it may carry the API key, whatever the server sent back.
        return replace(reply, proposal=_masked(reply.proposal, ep.redact),
                       rationale=ep.redact(reply.rationale), raw=ep.redact(reply.raw),
                       error=ep.redact(reply.error))

    def _decide(self, request: PolicyRequest) -> PolicyReply:
        try:
            self._ensure()
        except LMUnavailable as e:
            return PolicyReply(proposal=None, error=f"LLM unavailable: {e}")
        ep = self._endpoint
        assert ep is not None  # _ensure() has set it
        cands = build(request, self.cfg.validator)
        if self.learned is not None:
            # the memory's own candidates (docs/algorithm.md §10), when the menu lacks them
            for label, proposal, note in self.learned.candidates:
                if all(c.proposal != proposal for c in cands):
                    cands.append(Candidate(label, proposal, note))
        inputs = self.inputs(request, cands)
        self._adapter.schema = self.schema_for(cands)
        self.last_prompt_chars = sum(len(v) for v in inputs.values())
        # A late call abandoned last round may still be running (llama.cpp serves one
        # request at a time). In real time it has long finished; in virtual time it has
        # not, so wait for it as the interval would have, up to the timeout.
        if not self._busy.acquire(timeout=self.cfg.policy.llm_timeout_s):
            return PolicyReply(proposal=None, error="LLM busy with an abandoned late call")
        t0 = time.perf_counter()
        fut = self._pool.submit(self._call, inputs)
        fut.add_done_callback(lambda _f: self._busy.release())
        try:
            pred, raw = fut.result(timeout=self.cfg.policy.llm_timeout_s)
            self.last_call_ms = (time.perf_counter() - t0) * 1000
        except FutureTimeout:
            return PolicyReply(proposal=None, error=f"LLM late: no reply within "
                               f"{self.cfg.policy.llm_timeout_s:g} s")
        except Exception as e:  # endpoint down, HTTP error, timeout inside LiteLLM
            # masked before it is cut, so that no prefix of the key survives the cut
            return PolicyReply(proposal=None, error=f"LLM call failed: {e.__class__.__name__}: "
                               f"{ep.redact(str(e))[:300]}")
        self.last_prompt_chars = self._adapter.last_prompt_chars or self.last_prompt_chars
        raw = ep.redact(raw)  # the reply goes into the decision log verbatim
        log.debug("LLM decision in %.2f s: %s", time.perf_counter() - t0, raw[:200])
        # masked before its readability is judged: what is judged is what would be shown
        why = ep.redact(pred.rationale) if pred is not None and isinstance(
            pred.rationale, str) else pred.rationale if pred is not None else None
        reply = {"action": pred.action, "rationale": why} if pred is not None else raw
        if self.candidates_only:
            return self._chosen(reply, cands, raw, request.context)
        parsed = parse_reply(reply, self.pipeline.stage_names)
        rationale = parsed.rationale
        if parsed.proposal is not None:
            # a rationale that is no sentence is shown as what the action does
            rationale = shown(rationale, "proposed", parsed.proposal, ctx=request.context,
                              limit=RATIONALE_CHARS).removeprefix("[proposed] ")
        return PolicyReply(proposal=parsed.proposal, rationale=rationale, raw=raw,
                           error=parsed.error, prompt_chars=self.last_prompt_chars)

    def _chosen(self, reply: Any, cands: list[Candidate], raw: str,
                ctx: Context | None = None) -> PolicyReply:
        """The candidate a label reply names (tolerantly: JSON in prose, a bare label).
        Its rationale is `[label] prose` when the model's prose reads as a sentence, else
        `[label]` and the candidate's own description; the model's text stays in `raw`."""
        obj = reply if isinstance(reply, dict) else _first_object(reply)
        answer = obj.get("action") if isinstance(obj, dict) else reply
        # The grammar makes the first "action" field of the raw text a whole label. Read it
        # from there first: a reply cut at max_tokens, or whose rationale string holds a
        # raw newline, is not JSON, and a lenient parse of it may pick up some other
        # "action" the model wrote into its rationale.
        m = _LABEL_FIELD.search(raw or "")
        first = pick(cands, m.group(1)) if m else None
        rationale = obj.get("rationale", "") if isinstance(obj, dict) else ""
        # DSPy hands an absent or null field over as the text "None"
        rationale = rationale if isinstance(rationale, str) and rationale.strip() not in (
            "None", "null") else ""
        c = first or pick(cands, answer)
        if c is None:
            return PolicyReply(proposal=None, raw=raw, prompt_chars=self.last_prompt_chars,
                               error=f"reply names no candidate: {str(answer)[:80]!r}")
        # the model's prose is weak; the option it took is the explanation
        return PolicyReply(proposal=c.proposal,
                           rationale=shown(rationale, c.label, c.proposal, c.note, ctx,
                                           limit=RATIONALE_CHARS),
                           raw=raw, prompt_chars=self.last_prompt_chars)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


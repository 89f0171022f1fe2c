"""Tolerant parsing of LLM replies: broken replies become proposals or clean errors."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.policy.parse import canonical_stage, parse_reply

STAGES = ("preprocess", "inference", "postprocess")


def parsed(raw):
    return parse_reply(raw, STAGES)


def test_signature_shape():
    r = parsed('{"action": {"preprocess": {"action": "scale_replicas", "replicas": 3}}, '
               '"rationale": "queue grows"}')
    assert r.proposal == {"preprocess": {"action": "scale_replicas", "replicas": 3}}
    assert r.rationale == "queue grows" and r.error == ""


def test_bare_stage_object_in_prose_and_fences():
    raw = ('Sure! Here is the plan:\n```json\n{"inference": {"action": "adjust_rate", '
           '"rate_ratio": 0.6}}\n```\nHope it helps.')
    assert parsed(raw).proposal == {"inference": {"action": "adjust_rate", "rate_ratio": 0.6}}


def test_trailing_commas_python_literals_and_single_quotes():
    assert parsed('{"preprocess": {"replicas": 2,},}').proposal == {"preprocess": {"replicas": 2}}
    r = parsed("{'postprocess': {'action': 'none', 'x': None, 'y': True}}")
    assert r.proposal == {"postprocess": {"action": "none", "x": None, "y": True}}


def test_truncated_reply_is_closed():
    r = parsed('{"action": {"preprocess": {"action": "scale_replicas", "replicas": 4}, '
               '"inference": {"action": "adj')
    assert r.proposal is not None
    assert r.proposal["preprocess"] == {"action": "scale_replicas", "replicas": 4}


def test_dspy_chat_markers():
    raw = ('[[ ## action ## ]]\n{"preprocess": {"action": "scale_replicas", "replicas": 2}}\n\n'
           '[[ ## rationale ## ]]\nscale the bottleneck\n\n[[ ## completed ## ]]')
    r = parsed(raw)
    assert r.proposal == {"preprocess": {"action": "scale_replicas", "replicas": 2}}
    assert r.rationale == "scale the bottleneck"


def test_action_serialised_as_a_string():
    r = parsed({"action": '{"preprocess": {"replicas": 5}}', "rationale": "r"})
    assert r.proposal == {"preprocess": {"replicas": 5}}


def test_stage_aliases_map_to_pipeline_names_and_unknown_ones_are_dropped():
    r = parsed('{"Preprocessing": {"replicas": 2}, "post_process": {"replicas": 1}, '
               '"database": {"replicas": 9}}')
    assert r.proposal == {"preprocess": {"replicas": 2}, "postprocess": {"replicas": 1}}
    assert canonical_stage("pre", STAGES) == "preprocess"
    assert canonical_stage("process", STAGES) is None  # ambiguous prefix of nothing


def test_unusable_replies_are_errors_not_exceptions():
    assert parsed("").error == "empty reply"
    assert parsed("I think you should add replicas.").error.startswith("no JSON object")
    assert parsed('{"foo": 1}').proposal is None
    assert parsed(None).error.startswith("reply is a NoneType")
    assert parsed("{" * 50_000).proposal is None  # bounded work on pathological input


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.sampled_from(
                                  [*STAGES, "action", "rationale", "x"]), c, max_size=4),
                              max_leaves=20).map(str)))
def test_parser_is_total_and_only_names_known_stages(raw):
    r = parsed(raw)
    assert (r.proposal is None) == bool(r.error)
    if r.proposal is not None:
        assert set(r.proposal) <= set(STAGES)

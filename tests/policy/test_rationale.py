"""What a person reads as a rationale: the model's prose when it is a sentence, else the
chosen option's own description; the model's text is kept raw in the decision record."""

from __future__ import annotations

import pytest

from sair_ray.policy.rationale import describe, readable, shown, trim_cut
from sair_ray.proposal import hold, resize, scale_replicas, set_rate
from sair_ray.types import Context, StageKind, StageObservation

LABEL = "relieve preprocess"


def ctx(p99: float = 1840.0) -> Context:
    return Context("image_classification", 60.0, (
        StageObservation("preprocess", StageKind.CPU, 1, 1000, 1024, queue=12, util=0.97),
        StageObservation("inference", StageKind.GPU, 1, 2000, 4096, rate=0.6),
        StageObservation("postprocess", StageKind.CPU, 2, 1000, 1024)),
        arrival_rate=30.0, p50_ms=600.0, p99_ms=p99, sla_ms=1000.0)


RELIEVE = {"preprocess": scale_replicas(2), "inference": hold(), "postprocess": hold()}


@pytest.mark.parametrize("prose", [
    "{reasoner.getActionId()} scale_replicas",   # seen from SmolLM2 in `make demo`
    "relize-scale_replicas",                     # label fragments glued together
    "",
    "queue",
    "relieve preprocess scale replicas",         # the option restated, nothing more
    "more more more more",
    "x = ctx.get('p99'); return x",
    "reasoner.act()",
    "getActionId returns preprocess now",
    "\x00\x1b[31m<<<}}} nonsense ]]] 2e15",
    "1 2 3 4 5 6 7 8 9 ok ok",
    "qzx vbn mkl trw",                          # no vowels: not words
])
def test_code_and_garbage_are_not_readable(prose):
    assert not readable(prose, LABEL)


@pytest.mark.parametrize("prose", [
    "The preprocess queue is growing, so add a replica.",
    "p99 is over the SLA and preprocess is saturated",
    "Preprocess is the bottleneck at this load.",
    "scale the bottleneck",
])
def test_sentences_are_readable(prose):
    assert readable(prose, LABEL)


def test_unreadable_prose_shows_the_candidates_own_description():
    assert shown("{reasoner.getActionId()} scale_replicas", LABEL, RELIEVE, ctx=ctx()) == (
        "[relieve preprocess] add 1 replica to preprocess "
        "(p99 1840 ms over the 1000 ms SLA)")
    assert shown("relize-scale_replicas", LABEL, RELIEVE, ctx=ctx(p99=700.0)) == (
        "[relieve preprocess] add 1 replica to preprocess (preprocess is saturated)")
    good = "The preprocess queue is growing, so add a replica."
    assert shown(good, LABEL, RELIEVE, ctx=ctx()) == f"[{LABEL}] {good}"


def test_descriptions_say_what_each_option_changes():
    c = ctx()
    fit = {"preprocess": scale_replicas(3), "inference": set_rate(0.8),
           "postprocess": scale_replicas(1)}
    assert describe("fit", fit, "sized to the measured load", c) == (
        "fit: add 2 replicas to preprocess; set inference's GPU rate to 0.8 (from 0.6); "
        "remove 1 replica from postprocess (sized to the measured load)")
    assert describe("hold", {"preprocess": hold()}, "", ctx(p99=400.0)) == (
        "hold: keep every stage as it is (p99 400 ms within the 1000 ms SLA)")
    assert describe("episode 1a2b3c4d", {"preprocess": resize(1500, 1024)},
                    "reward +0.42", c) == (
        "episode 1a2b3c4d: set preprocess's CPU to 1500 m (from 1000 m) (reward +0.42)")
    # without a context: the targets themselves
    assert describe("fit", {"preprocess": scale_replicas(3)}) == (
        "fit: run 3 replicas of preprocess")


def test_a_sentence_cut_by_the_length_cap_loses_its_cut_word():
    cut = "Preprocess is the bottleneck with p99 over the SLA, so we ad"
    assert trim_cut(cut, 60) == "Preprocess is the bottleneck with p99 over the SLA, so we..."
    assert trim_cut("Short and whole.", 60) == "Short and whole."
    assert shown(cut, LABEL, RELIEVE, ctx=ctx(), limit=60).endswith("so we...")

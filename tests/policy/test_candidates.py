"""The candidate actions offered to the policy model, and the retrieval-only rule."""

from __future__ import annotations

from sair_ray.config import SAIRConfig
from sair_ray.policy import make_policy
from sair_ray.policy.candidates import build, default_choice
from sair_ray.types import StageAllocation
from sair_ray.validator import Validator
from tests import factories
from tests.policy.helpers import experience, overloaded, request, retrieved

V = SAIRConfig().validator


def labels(cands):
    return [c.label for c in cands]


def test_hold_is_always_offered_first():
    cands = build(request(), V)
    assert cands[0].label == "hold"
    assert all(v == {"action": "none"} for v in cands[0].proposal.values())


def test_overload_offers_relief_of_the_bottleneck_stage():
    cands = build(request(ctx=overloaded()), V)
    relief = next(c for c in cands if c.label.startswith("relieve"))
    assert relief.label == "relieve preprocess"
    assert relief.proposal["preprocess"] == {"action": "scale_replicas", "replicas": 3}
    assert relief.proposal["inference"] == {"action": "none"}


def test_gpu_bottleneck_raises_rate_before_replicas():
    p = factories.pipeline()
    alloc = p.initial_allocation() | {"inference": StageAllocation(1, 2000, 4096, 0.5)}
    ctx = factories.context(p, p99=2000, alloc=alloc, util={"inference": 1.0},
                            queue={"inference": 300.0}, stage_p99={"inference": 900.0})
    relief = next(c for c in build(request(p, ctx), V) if c.label.startswith("relieve"))
    assert relief.proposal["inference"] == {"action": "adjust_rate", "rate_ratio": 0.7}


def test_trim_only_when_well_under_the_sla():
    p = factories.pipeline()
    alloc = {k: StageAllocation(3, a.cpu_m, a.mem_mb, a.rate)
             for k, a in p.initial_allocation().items()}
    calm = factories.context(p, p99=100, alloc=alloc, util={"postprocess": 0.05})
    trims = [c for c in build(request(p, calm), V) if c.label.startswith("trim")]
    assert [c.label for c in trims] == ["trim postprocess"]
    assert trims[0].proposal["postprocess"] == {"action": "scale_replicas", "replicas": 2}
    busy = factories.context(p, p99=400, alloc=alloc)
    assert not any(c.label.startswith("trim") for c in build(request(p, busy), V))


def test_episodes_are_replayed_as_deltas_best_first_and_deduplicated():
    p = factories.pipeline()
    past = factories.context(p)
    up = experience(past, {"postprocess": {"replicas": 1}}, 0.9, "aaaaaaaa11")
    same = experience(past, {"postprocess": {"replicas": 1}}, 0.5, "bbbbbbbb22")
    weak = experience(past, {"preprocess": {"replicas": 2}}, 0.2, "cccccccc33")
    bad = experience(past, {"preprocess": {"replicas": -1}}, -0.5, "dddddddd44")
    alloc = p.initial_allocation() | {"postprocess": StageAllocation(4, 500, 512, 1.0)}
    now = factories.context(p, alloc=alloc)
    cands = build(request(p, now, (retrieved(weak), retrieved(same), retrieved(up),
                                   retrieved(bad))), V)
    eps = [c for c in cands if c.label.startswith("episode")]
    assert [c.label[:16] for c in eps] == ["episode aaaaaaaa", "episode cccccccc"]
    assert eps[0].proposal["postprocess"] == {"action": "scale_replicas", "replicas": 5}


def test_retrieval_only_prefers_an_episode_then_relief_then_hold():
    pol = make_policy("sair-retrieval", SAIRConfig(), pipeline=factories.pipeline())
    ctx = overloaded()
    assert pol.decide(request(ctx=ctx)).rationale == "retrieval-only: relieve preprocess"
    ep = experience(ctx, {"preprocess": {"replicas": 1}}, 0.7, "ffffffff00")
    reply = pol.decide(request(ctx=ctx, episodes=(retrieved(ep),)))
    assert reply.rationale.startswith("retrieval-only: episode ffffffff")
    assert default_choice(build(request(), V)).label == "hold"


def test_every_candidate_passes_the_validator_unchanged_when_no_cooldown_applies():
    p = factories.pipeline()
    ctx = overloaded(p)
    val = Validator(p, V)
    for c in build(request(p, ctx), V):
        out = val.validate(c.proposal, ctx.allocation, now=0.0,
                           free=factories.pipeline().cluster)
        assert out.clamps == (), (c.label, out.clamps)


def test_a_failing_pipeline_is_only_offered_episodes_that_relieve_its_bottleneck():
    p = factories.pipeline()
    past = factories.context(p)
    trim = experience(past, {"preprocess": {"replicas": -1}}, 0.9, "trim0000aa")
    hold = experience(past, {}, 0.8, "hold0000bb")
    elsewhere = experience(past, {"postprocess": {"replicas": 1}}, 0.7, "else0000cc")
    helps = experience(past, {"preprocess": {"replicas": 1}}, 0.3, "help0000dd")
    ctx = overloaded(p)
    alloc = ctx.allocation
    ctx_more = factories.context(p, p99=4 * p.sla_ms, alloc={**alloc, "preprocess":
                                 StageAllocation(2, 1000, 1024)}, util={"preprocess": 0.99},
                                 queue={"preprocess": 200.0}, stage_p99={"preprocess": 400.0})
    cands = build(request(p, ctx_more, tuple(retrieved(e) for e in (trim, hold, elsewhere,
                                                                    helps))), V)
    assert [c.label[:16] for c in cands if c.label.startswith("episode")] == \
        ["episode help0000"]
    assert default_choice(cands).label.startswith("episode help0000")

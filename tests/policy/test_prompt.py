"""The prompt inputs of docs/algorithm.md §6 / paper Appendix I."""

from __future__ import annotations

from sair_ray.config import SAIRConfig, ValidatorConfig
from sair_ray.policy.prompt import (
    format_constraints,
    format_current,
    format_episode,
    format_episodes,
    label,
    output_schema,
    value_grid,
)
from sair_ray.types import StageKind
from tests import factories
from tests.policy.helpers import experience, overloaded, request


def test_episode_has_the_paper_skeleton_and_absolute_targets():
    p = factories.pipeline()
    ctx = overloaded(p)
    e = experience(ctx, {"preprocess": {"replicas": 2, "cpu_m": 0, "mem_mb": 0, "rate": 0.0}},
                   0.85)
    lines = format_episode(e).splitlines()
    assert lines[0] == "Episode (Reward: +0.85 GOOD):"
    assert lines[1].startswith("Input: preprocess r=1 q=200 u=99% cpu=")
    assert "inference r=1 q=0 u=50% rate=1.00" in lines[1] and "p99=2000ms SLA=500ms" in lines[1]
    # stored deltas become the absolute targets of the output schema (1 + 2 replicas)
    assert lines[2] == 'Prediction: {"preprocess":{"action":"scale_replicas","replicas":3}}'
    assert lines[3] == "Reward: +0.85"
    assert len(lines) == 4


def test_hold_episode_and_labels():
    e = experience(factories.context(), {}, 0.3)
    assert "Prediction: {} (hold)" in format_episode(e)
    assert (label(0.9), label(0.3), label(0.0), label(-0.4)) == ("GOOD", "FAIR", "BAD", "BAD")


def test_episodes_keep_the_curriculum_order_given():
    ctx = factories.context()
    eps = [experience(ctx, {}, r, f"e{i}") for i, r in enumerate([0.1, 0.4, 0.9])]
    text = format_episodes(eps)
    assert text.index("+0.10") < text.index("+0.40") < text.index("+0.90")
    assert "no past episodes" in format_episodes([])


def test_current_input_names_the_bottleneck():
    req = request(ctx=overloaded())
    text = format_current(req.context, req.bottleneck)
    assert "Bottleneck: preprocess" in text
    assert "SLA 500ms" in text


def test_constraints_state_limits_sla_and_budget_and_do_not_depend_on_the_round():
    p = factories.pipeline()
    v = ValidatorConfig()
    text = format_constraints(p, v, c_max=12.5)
    assert "preprocess (CPU stage): replicas 1-8, cpu_millicores 250-4000" in text
    assert "inference (GPU stage)" in text and "rate_ratio 0.10-1.00" in text
    assert "Max cost budget: $12.5/hour" in text and "(500ms)" in text
    assert text == format_constraints(p, v, c_max=12.5)


def test_value_grid_stays_in_bounds_and_small():
    g = value_grid(250, 4000, 250)
    assert g[0] == 250 and g[-1] == 4000 and len(g) <= 40
    big = value_grid(1, 1_000_000, 1)
    assert big[0] == 1 and big[-1] == 1_000_000 and len(big) <= 41
    assert value_grid(0.1, 1.0, 0.1, integral=False) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                          0.8, 0.9, 1.0]


def test_output_schema_only_allows_in_range_values_and_matching_fields():
    p = factories.pipeline()
    v = SAIRConfig().validator
    schema = output_schema(p, v)
    stages = schema["properties"]["action"]["properties"]
    assert set(stages) == set(p.stage_names)
    for s in p.stages:
        lim = s.limits(v)
        variants = {var["properties"]["action"]["const"]: var for var in stages[s.name]["oneOf"]}
        if s.kind == StageKind.GPU:
            assert set(variants) == {"none", "scale_replicas", "adjust_rate"}
            rates = variants["adjust_rate"]["properties"]["rate_ratio"]["enum"]
            assert min(rates) == lim.rate_min and max(rates) == lim.rate_max
        else:
            both = variants["scale_both"]
            assert set(both["required"]) == {"action", "replicas", "cpu_millicores", "memory_mb"}
            cpus = both["properties"]["cpu_millicores"]["enum"]
            assert min(cpus) == lim.cpu_m_min and max(cpus) == lim.cpu_m_max
        reps = variants["scale_replicas"]["properties"]["replicas"]["enum"]
        assert reps == list(range(lim.replicas_min, lim.replicas_max + 1))

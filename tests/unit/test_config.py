from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sair_ray.config import ABLATIONS, ConfigError, SAIRConfig, iter_options, with_ablation


def test_defaults_are_the_spec():
    c = SAIRConfig()
    assert (c.loop.decision_interval_s, c.loop.settle_s) == (30, 10)
    r = c.reward
    assert (r.w_L, r.w_C, r.kappa, r.beta, r.reward_threshold) == (0.7, 0.3, 1, 0.2, 0)
    assert (r.store_all, r.global_frontier, r.bucket_base, r.penalty) == (
        False, False, 1.25, "quadratic")
    q = c.retrieval
    assert (q.K, q.n_candidates, q.loo_k, q.lambda_div) == (15, 64, 10, 0.1)
    assert c.memory.index_exact_max == 100_000
    e = c.exploration
    assert (e.epsilon_0, e.epsilon_decay, e.epsilon_min) == (0.15, 0.95, 0.05)
    assert (c.policy.temperature, c.policy.llm_timeout_s) == (1.0, 20)
    v = c.validator
    assert (v.max_replica_step, v.max_cpu_step_m, v.max_mem_step_mb, v.max_rate_step) == (
        2, 500, 256, 0.2)
    assert (v.rate_min, v.rate_max, v.replicas_min, v.replicas_max) == (0.1, 1.0, 1, 8)
    assert (v.cooldown_up_s, v.cooldown_down_s) == (60, 120)
    assert (c.cost.gpu_per_h, c.cost.cpu_core_per_h, c.cost.mem_gb_per_h) == (
        3.06, 0.024, 0.006)


def test_yaml_round_trip(tmp_path):
    p = tmp_path / "sair.yaml"
    p.write_text(yaml.safe_dump({"reward": {"w_L": 0.6, "w_C": 0.4}, "validator": {
        "replicas_max": 16}, "seed": 7}))
    c = SAIRConfig.from_yaml(p)
    assert c.reward.w_L == 0.6 and c.validator.replicas_max == 16 and c.seed == 7
    assert SAIRConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("data,match", [
    ({"reward": {"w_L": 2}}, r"reward\.w_L: expected a number in \[0, 1\], got 2"),
    ({"reward": {"wl": 1}}, r"reward\.wl: unknown key; allowed keys here: .*w_L"),
    ({"bogus": 1}, r"bogus: unknown key"),
    ({"retrieval": {"K": "fifteen"}}, r"retrieval\.K: expected an integer"),
    ({"retrieval": {"K": 2.5}}, r"retrieval\.K: expected an integer"),
    ({"reward": {"store_all": "yes"}}, r"reward\.store_all: expected true or false"),
    ({"reward": {"penalty": "cubic"}}, r"reward\.penalty: expected one of 'quadratic'"),
    ({"validator": {"replicas_min": 5, "replicas_max": 3}}, r"replicas_min \(5\) must be <="),
    ({"validator": {"cooldown_up_s": float("nan")}}, r"validator\.cooldown_up_s"),
    ({"reward": {"w_L": 0.5}}, r"w_L \+ reward\.w_C must equal 1"),
    ({"loop": [1, 2]}, r"loop: expected a mapping"),
    ({"reward": {"bucket_base": 1}}, r"reward\.bucket_base: expected a number in \(1, 100\]"),
])
def test_errors_name_the_key_and_the_allowed_range(data, match):
    with pytest.raises(ConfigError, match=match):
        SAIRConfig.from_dict(data)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        SAIRConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SAIRConfig.from_yaml(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        SAIRConfig.from_yaml(bad)
    bad.write_text("reward:\n  kappa: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: reward\.kappa"):
        SAIRConfig.from_yaml(bad)


def test_ablations_apply_the_spec_switches():
    base = SAIRConfig()
    for name in ABLATIONS:
        with_ablation(base, name)
    assert with_ablation(base, "equal_weights").reward.w_L == 0.5
    assert with_ablation(base, "cost_focus").reward.w_C == 0.7
    assert with_ablation(base, "no_bonus").reward.beta == 0
    assert with_ablation(base, "no_icl").retrieval.K == 0
    with pytest.raises(ConfigError, match="unknown ablation"):
        with_ablation(base, "nope")


def test_every_option_is_documented():
    opts = list(iter_options())
    assert len(opts) > 40
    assert all(help_ for _, _, _, help_ in opts)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c,
                                                                 max_size=3)), max_leaves=8)
sections = st.sampled_from(["loop", "reward", "retrieval", "memory", "exploration", "policy",
                            "validator", "cost", "seed", "other"])
keys = st.sampled_from([k.split(".")[-1] for k, *_ in iter_options()] + ["zzz"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(sections, st.one_of(json_values, st.dictionaries(keys, json_values,
                                                                         max_size=4)),
                       max_size=4))
def test_fuzzed_configs_either_load_or_raise_config_error(data):
    try:
        c = SAIRConfig.from_dict(data)
    except ConfigError as e:
        assert str(e)
    else:
        assert SAIRConfig.from_dict(c.to_dict()) == c

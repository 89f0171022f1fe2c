"""SAIR reaches no network after install, and the policy's API key travels as
`Authorization: Bearer <key>` and nowhere else.

The offline check runs in a fresh interpreter (`offline_probe.py`) with every socket to a
non-loopback address refused and recorded from its first line on, so fetches made while
DSPy and LiteLLM are imported count; its environment has none of SAIR's offline switches,
so it is `import sair_ray` that sets them. A second run with two switches turned off by
the "user" shows the guard does see the fetches those switches stop (the test is not
vacuous), and that the user's choice wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sair_ray.offline import OFFLINE_ENV

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "SAIR_PROBE_KEY"   # offline_probe.KEY_ENV (importing the probe installs its guard)
KEY = "sk-probe-7c1e5a9b3d"


def probe(tmp_path: Path, **env: str) -> tuple[dict[str, Any], str]:
    """Run offline_probe.py; returns its result and its output (every log, at DEBUG)."""
    clean = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    clean.update(env, **{KEY_ENV: KEY})
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH"))
                                          if p)
    result = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, "-m", "tests.policy.offline_probe", str(result)],
                       cwd=ROOT, env=clean, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(result.read_text()), r.stdout + r.stderr


def test_the_policy_path_reaches_no_network_and_the_key_travels_only_as_a_bearer_token(
        tmp_path):
    out, logs = probe(tmp_path)
    assert out["attempts"] == [], "\n\n".join(out["attempts"])
    assert out["env"] == dict(OFFLINE_ENV)          # set by `import sair_ray`, not by us
    assert out["error"] == "" and out["rationale"].startswith("[")
    assert out["cli_exit"] == 0, out["cli_output"][-2000:]
    assert out["dspy_metadata"]["source"] == "local"
    assert out["dspy_metadata"]["is_env_forced"] is True
    # policy.model is empty: the model is asked from /v1/models, with the key
    assert [p for p, _ in out["gets"]] == ["/v1/models", "/v1/models"]
    assert all(auth == f"Bearer {KEY}" for _, auth in out["gets"])
    # every POST carries it, in particular those carrying a round's prompt (policy + CLI)
    assert sum(prompt for _, prompt in out["posts"]) == 2
    assert all(auth == f"Bearer {KEY}" for auth, _ in out["posts"])
    # ... and nothing else does: not the logs of any library at DEBUG, not the CLI's output
    assert KEY not in logs
    assert KEY not in out["cli_output"] and KEY not in out["error"] + out["rationale"]


def test_the_guard_sees_the_fetches_the_switches_stop_and_the_user_may_turn_them_back_on(
        tmp_path):
    out, _ = probe(tmp_path, LITELLM_LOCAL_MODEL_COST_MAP="False", LITELLM_OFFLINE_MODE="false")
    assert out["env"]["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"  # the user's value stays
    assert out["env"]["HF_HUB_OFFLINE"] == "1"                    # the others still set
    refused = "\n".join(out["attempts"])
    assert "raw.githubusercontent.com" in refused
    assert "litellm" in refused and "dspy/clients/model_metadata" in refused
    assert out["dspy_metadata"]["fallback_reason"]   # DSPy fell back to its snapshot
    assert out["error"] == ""                        # and the decision still came


def test_apply_keeps_what_the_user_set_and_user_environ_gives_back_only_that(monkeypatch):
    from sair_ray import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "")              # empty counts as unset
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "False")  # an explicit opt-in
    done = offline.apply()
    assert done.keys() >= {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"
    user = offline.user_environ()      # what `sair policy serve --backend vllm` passes on
    assert "HF_HUB_OFFLINE" not in user and "TRANSFORMERS_OFFLINE" not in user
    assert user["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"
    assert offline.apply() == {}       # idempotent

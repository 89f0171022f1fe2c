"""SAIR runs offline: after install, nothing reaches the network unless configured to.

The only destinations SAIR talks to are the ones its configuration names: the policy
endpoint (`policy.url`, or the embedded llama.cpp server on loopback), Ray, the Ray
dashboard, Prometheus, the Kubernetes API. Several dependencies also fetch things on
their own unless told not to; on a machine without internet each such fetch fails with
warnings (LiteLLM retries its price list three times over ~7 s), and where there is
internet it is traffic nobody configured. `OFFLINE_ENV` says which switch stops what.

`apply()` runs on `import sair_ray`, so it precedes every import of DSPy, LiteLLM or Ray
by SAIR code, in every process that runs SAIR code (the `sair` CLI, the detached
controller actor, bench workers): each of them imports the package first. A variable the
environment already sets (non-empty) is left alone, so an operator can opt back in, e.g.
`LITELLM_LOCAL_MODEL_COST_MAP=False`. A program that imported LiteLLM before SAIR has
already made LiteLLM's import-time fetch; set the variables before that import instead.

`user_environ()` is the environment without what `apply()` added, for a child process
that must fetch what the user named (`sair policy serve --backend vllm --model
Qwen/...` downloads that model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OFFLINE_ENV: Mapping[str, str] = {
    # LiteLLM downloads its model price list from GitHub on import; DSPy's model-metadata
    # refresh fetches the same list on first use ("Model metadata refresh failed
    # (URLError)"). Both read this switch and use their bundled copy.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # every other catalogue LiteLLM fetches by itself: Hugging Face tokenizers for token
    # counting, Anthropic beta headers, blog posts, presets
    "LITELLM_OFFLINE_MODE": "true",
    # Hugging Face Hub look-ups by transformers / huggingface_hub (the serve apps load
    # their weights from local files) and the Hub client's telemetry
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # the common opt-out of usage telemetry, for tools that honour it
    "DO_NOT_TRACK": "1",
    # Ray's usage-stats report, from a Ray that SAIR starts (`sair demo`)
    "RAY_USAGE_STATS_ENABLED": "0",
}

_added: set[str] = set()


def apply() -> dict[str, str]:
    """Set every switch of `OFFLINE_ENV` the environment leaves unset or empty; returns
    what it set. Idempotent."""
    done = {}
    for name, value in OFFLINE_ENV.items():
        if not os.environ.get(name):
            os.environ[name] = value
            _added.add(name)
            done[name] = value
    return done


def user_environ() -> dict[str, str]:
    """os.environ without the switches `apply()` added (those the user set stay)."""
    return {k: v for k, v in os.environ.items()
            if not (k in _added and v == OFFLINE_ENV[k])}

"""The policy path end to end in a fresh interpreter, under the network guard.

Run by `test_offline.py` as `python -m tests.policy.offline_probe OUT.json`: the guard is
installed before anything imports DSPy, LiteLLM or SAIR, so fetches made at import time
count too (in the pytest process those modules are long imported). It starts the real
loopback OpenAI-compatible server, builds the LLM policy from a configuration (the key in
the variable `policy.api_key_env` names, the model asked from `/v1/models`), decides one
round, runs `sair policy check` on the same endpoint, loads DSPy's model metadata, and
writes to OUT.json what the guard refused, what the server received, and the offline
switches as the process ended. Every logger is on at DEBUG (LiteLLM's own handler sends
some of it to stdout), so the caller can check that the key is in none of the output.
"""

from __future__ import annotations

from tests.policy import netguard

netguard.install()  # first: before any import below can open a socket

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

KEY_ENV = "SAIR_PROBE_KEY"


def answer(body: dict[str, Any]) -> tuple[int, Any, float]:
    """The first label the round's schema offers (the warm-up gets any JSON)."""
    from tests.policy.openai_server import completion

    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    labels = schema.get("properties", {}).get("action", {}).get("enum") or ["hold"]
    return 200, completion(json.dumps({"action": labels[0], "rationale": "probe"})), 0.0


def main() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from typer.testing import CliRunner

    from sair_ray.cli import app
    from sair_ray.config import SAIRConfig
    from sair_ray.offline import OFFLINE_ENV
    from sair_ray.registry import make_policy
    from tests import factories
    from tests.policy.helpers import overloaded, request
    from tests.policy.openai_server import serving

    out: dict[str, Any] = {}
    with serving() as srv, tempfile.TemporaryDirectory() as tmp:
        srv.behaviour = answer
        policy = {"backend": "vllm", "url": srv.url, "api_key_env": KEY_ENV,
                  "llm_timeout_s": 30.0}
        cfg = SAIRConfig().replace(**{f"policy.{k}": v for k, v in policy.items()})
        reply = make_policy("sair", cfg, pipeline=factories.pipeline()).decide(
            request(ctx=overloaded()))
        out["error"], out["rationale"] = reply.error, reply.rationale
        path = Path(tmp) / "sair.yaml"
        path.write_text(json.dumps({"policy": policy}))  # JSON is YAML
        r = CliRunner().invoke(app, ["policy", "check", "--config", str(path)])
        out["cli_exit"], out["cli_output"] = r.exit_code, r.output
        # (authorization header, whether the request carries the round's prompt)
        out["posts"] = [(h.get("authorization"), "Candidate actions" in json.dumps(b))
                        for h, b in srv.requests]
        out["gets"] = [(p, h.get("authorization")) for p, h in srv.gets]
    # DSPy's model-metadata refresh ("Model metadata refresh failed (URLError)" on a fresh
    # install) is not on the LiteLLM engine's path; load it here, under the guard, so the
    # switch that keeps it local is tested too.
    from dspy.clients.model_metadata import source_info

    out["dspy_metadata"] = source_info()
    out["env"] = {k: os.environ.get(k) for k in OFFLINE_ENV}
    out["attempts"] = [str(a) for a in netguard.attempts]
    Path(sys.argv[1]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

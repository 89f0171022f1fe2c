"""One embedded policy model per Ray cluster, shared by every attached app.

Each app's controller is its own actor process. If each started the embedded llama.cpp
server itself (`sair_ray.policy.lm.embedded_server`, one per process), 50 attached apps
would mean 50 servers on the head: ~190 MB of KV cache and min(cores/2, 8) spinning
threads each, none of it visible to Ray's scheduler. Instead the live controllers of the
`sair` policy ask the detached actor `sair-llm:<model>` (namespace `sair`, on the head,
next to the controllers, whose loopback it serves) for the server's URL; the actor starts
the server once and restarts it if it died. The model server answers one request at a
time, so many apps on one embedded model queue behind each other (a reply later than
`policy.llm_timeout_s` is a no-op round, `policy.fallback` decides it): for tens of apps
use a vLLM endpoint (`policy.backend: vllm`, docs/policy.md).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sair_ray.config import PolicyConfig
from sair_ray.policy.lm import (
    EMBEDDED_MODEL_NAME,
    START_TIMEOUT_S,
    EmbeddedServer,
    Endpoint,
    LMUnavailable,
    smollm2_path,
)

log = logging.getLogger(__name__)

NAMESPACE = "sair"
HEAD_RESOURCE = "node:__internal_head__"


class LMHost:
    """The actor holding the shared embedded server."""

    def __init__(self, model_path: str) -> None:
        self.server = EmbeddedServer(Path(model_path))
        self.server.start()

    def url(self) -> str:
        if not self.server.running:   # it died (OOM, a crash): start it again
            log.warning("the shared policy model server is gone; restarting it")
            self.server.start()
        return self.server.url

    def endpoint(self) -> tuple[str, str]:
        """The server's URL and API key (the server refuses requests without it)."""
        return self.url(), self.server.api_key

    def pid(self) -> int | None:
        proc = self.server._proc
        return proc.pid if proc is not None else None

    def __del__(self) -> None:
        self.server.stop()


def host_name(model_path: Path) -> str:
    return "sair-llm:" + hashlib.sha256(str(model_path).encode()).hexdigest()[:12]


def shared_endpoint(cfg: PolicyConfig, timeout_s: float = START_TIMEOUT_S + 60
                    ) -> Endpoint | None:
    """The shared server's endpoint when `cfg` names the embedded model and this process
    is connected to Ray; None otherwise (the policy then resolves its endpoint itself)."""
    import sys

    ray = sys.modules.get("ray")
    if cfg.backend != "llamacpp" or cfg.url or ray is None or not ray.is_initialized():
        return None
    path = Path(cfg.model) if cfg.model else smollm2_path()
    if not path.is_file():
        raise LMUnavailable(f"policy.model {cfg.model!r} is not a GGUF file")
    host: Any = ray.remote(LMHost).options(
        name=host_name(path), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, resources={HEAD_RESOURCE: 0.001},
        max_concurrency=8).remote(str(path))
    try:
        url, key = ray.get(host.endpoint.remote(), timeout=timeout_s)
    except Exception as e:  # the server did not start (see its actor's log)
        raise LMUnavailable(f"the shared policy model server did not start: {e}") from e
    return Endpoint(url, EMBEDDED_MODEL_NAME, key, supports_schema=True)

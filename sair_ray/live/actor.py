"""The detached, named Ray actor that runs one app's controller: `sair-controller:<app>`
in Ray namespace `sair`.

It is created with `lifetime="detached"` (it outlives the driver that attached it) and
`max_restarts=-1` (Ray re-creates it after a crash; `LiveLoop.setup` then resumes from
state.json and the Parquet memory). It reserves no CPU (its work is a few milliseconds per
round, plus the policy) and runs on the head node, so its data directory stays on one disk.
The loop runs in its own thread; method calls (status, decisions, stop) run concurrently.

A failing round never ends the loop (`LiveLoop.round` counts it and goes on). Should the
loop thread end anyway before `stop` (an exception that is not an `Exception`), the actor
process stays up, so Ray would not restart it: the actor then says so, `status()`
reporting `running: False` and `dead` with the cause (`dead_reason()` alone), and the next
attach of the app (`sair attach`, `sair_ray.attach`, `ensure_attached`) kills this actor
and starts a fresh one, which resumes from state.json and the memory
(`sair_ray/live/handle.py`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sair_ray.live.loop import LiveLoop, LiveOptions

NAMESPACE = "sair"
ACTOR_PREFIX = "sair-controller:"
HEAD_RESOURCE = "node:__internal_head__"

log = logging.getLogger(__name__)


def actor_name(app: str) -> str:
    return f"{ACTOR_PREFIX}{app}"


class ControllerActor:
    def __init__(self, options: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.options = options
        self.loop = LiveLoop(LiveOptions(**options))
        self._stop = threading.Event()
        self._dead: str | None = None   # why the loop thread ended without a stop
        self._thread = threading.Thread(target=self._run, name=f"sair-{options['app']}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        app = self.options["app"]
        try:
            self.loop.run(self._stop)
            if not self._stop.is_set():
                self._dead = "the loop returned without being stopped"
        except BaseException as e:  # noqa: BLE001 - recorded for status() and re-attach
            self._dead = f"{type(e).__name__}: {e}"[:1000]
            log.exception("%s: controller loop ended", app)
        finally:
            if self._dead is not None:
                log.error("%s: the controller loop is dead (%s); re-attach to replace this "
                          "actor", app, self._dead)
            try:
                self.loop.close()
            except Exception:
                log.exception("%s: closing the controller failed", app)

    def ping(self) -> str:
        return "ok"

    def get_options(self) -> dict[str, Any]:
        return dict(self.options)

    def dead_reason(self) -> str | None:
        """Why the loop thread ended without a stop; None while it runs (or was stopped)."""
        if self._dead is None and not self._thread.is_alive() and not self._stop.is_set():
            return "the loop thread ended"
        return self._dead

    def status(self) -> dict[str, Any]:
        st = self.loop.status()
        st["running"] = self._thread.is_alive()
        st["dead"] = self.dead_reason()
        return st

    def decisions(self, last: int = 10) -> list[dict[str, Any]]:
        return self.loop.decisions(last)

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Finish the round in progress, close memory and log, report the final status."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self.status()


def actor_options(app: str) -> dict[str, Any]:
    """Ray options of the controller actor (shared by attach and ensure_attached)."""
    return {"name": actor_name(app), "namespace": NAMESPACE, "lifetime": "detached",
            "get_if_exists": True, "num_cpus": 0, "max_restarts": -1,
            "max_concurrency": 4, "resources": {HEAD_RESOURCE: 0.001}}

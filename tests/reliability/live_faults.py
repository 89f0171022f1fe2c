"""Helpers of the live fault tests: image_classification on a private local Ray
with the dashboard, and an HTTP forwarder in front of the dashboard that a test can take
down, bring back, or make hold a reply.

The apps run on CPU and reserve no Ray memory (two cores are shared by everything here);
each test file serves HTTP on a free port of its own (tests/ray_harness.free_port).
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.ray_harness import private_ray

ROOT = Path(__file__).resolve().parents[2]
APP = "image_classification"
SERVE_CONFIG = ROOT / "serve_apps" / "configs" / f"{APP}.yaml"
PROFILE = ROOT / "sair_ray" / "profiles" / f"{APP}.yaml"


@dataclass
class Served:
    dashboard: str          # host:port of the real dashboard
    url: str                # the app's HTTP route
    admin: Any              # ServeAdmin on the real dashboard (the test's own view)


def serve_config(http_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    cfg["applications"][0]["args"] = {"device": "cpu", "reserve_memory": False}
    return cfg


@contextlib.contextmanager
def served_app(http_port: int, num_cpus: int = 8) -> Iterator[Served]:
    """Local Ray (dashboard on), image_classification deployed from its serve config
    (declarative, external scaler on), everything shut down on exit."""
    from sair_ray.backends.ray_serve import ServeAdmin
    from sair_ray.observe import drop_aggregator

    with private_ray(num_cpus, dashboard=True) as ray_:
        try:
            admin = ServeAdmin(ray_.dashboard, timeout_s=180)   # the first PUT starts Serve
            admin.deploy(serve_config(http_port))
            wait_for(lambda: admin.details().get("applications", {}).get(APP, {})
                     .get("status") == "RUNNING", 240, f"{APP} RUNNING")
            yield Served(ray_.dashboard, f"http://127.0.0.1:{http_port}/{APP}", admin)
        finally:
            drop_aggregator(APP)


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll `cond` until it returns something truthy (returned); TimeoutError naming `what`
    otherwise. Errors while polling count as not yet (a restarting actor, say)."""
    deadline = time.time() + timeout_s
    last: Exception | None = None
    while True:
        try:
            out = cond()
            if out:
                return out
        except Exception as e:
            last = e
        if time.time() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s:g} s (last error: {last!r})")
        time.sleep(every_s)


def targets(admin: Any) -> dict[str, int]:
    deps = admin.details()["applications"][APP]["deployments"]
    return {n: int(d["target_num_replicas"]) for n, d in deps.items()}


def running_replicas(admin: Any, stage: str) -> list[dict[str, Any]]:
    dep = admin.details()["applications"][APP]["deployments"][stage]
    return [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]


def pinned_profile(path: Path, *, sla_ms: float | None = None,
                   replicas_max: dict[str, int] | None = None) -> Path:
    """The shipped profile with every stage's CPU and memory pinned to its initial value
    (so the only moves are replica counts: no rolling restarts on two cores), optionally
    another SLA and per-stage replica ceilings."""
    from sair_ray.profiles import replica_moves_only

    prof = replica_moves_only(yaml.safe_load(PROFILE.read_text()), replicas_max=replicas_max)
    if sla_ms is not None:
        prof["sla_ms"] = sla_ms
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


# -- a dashboard that can fail ---------------------------------------------------------------
@dataclass
class Mutation:
    time: float
    method: str
    path: str
    body: bytes
    status: int = 0


@dataclass
class DashboardProxy:
    """Forwards HTTP to the real dashboard at `target` from its own local port.

    `down()` closes the listening socket (clients get "connection refused", as from a
    dashboard that died) and `up()` listens again on the same port. `hold_next_mutation()`
    makes the next POST/PUT go through to the dashboard and then withholds the reply until
    `release()`: the caller is stuck inside its request after Serve has acted. After
    `cut_mutations_after(n)`, n more POST/PUTs are forwarded and later ones are dropped
    without a reply (the connection closes). `mutations` lists what was forwarded.
    """

    target: str
    port: int = 0
    mutations: list[Mutation] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _hold: bool = False
    _cut_after: int | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> DashboardProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                mutation = self.command in ("POST", "PUT")
                hold = False
                if mutation:
                    with proxy._lock:
                        if proxy._cut_after is not None:
                            if proxy._cut_after <= 0:
                                self.close_connection = True
                                return       # no reply at all: the client sees a reset
                            proxy._cut_after -= 1
                        hold, proxy._hold = proxy._hold, False
                fwd = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization", "cookie")}
                req = urllib.request.Request(f"http://{proxy.target}{self.path}",
                                             data=body or None, method=self.command,
                                             headers=fwd)
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                if mutation:
                    proxy.mutations.append(Mutation(time.time(), self.command, self.path,
                                                    body, status))
                if hold:
                    proxy.held.set()
                    proxy._release.wait(600)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass                      # the caller is gone (killed while held)

            do_GET = do_POST = do_PUT = _forward

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hold_next_mutation(self) -> None:
        self.held.clear()
        self._release.clear()
        self._hold = True

    def release(self) -> None:
        self._release.set()

    def cut_mutations_after(self, n: int | None) -> None:
        self._cut_after = n

    def close(self) -> None:
        self.release()
        self.down()

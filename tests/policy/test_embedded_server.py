"""The embedded llama.cpp server (sair_ray/policy/lm.py) is SAIR's alone: it listens on
loopback only, refuses requests without its per-server key (which is not on its command
line), and SAIR uses the server on its port only once it proves to be its own."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sair_ray.config import PolicyConfig
from sair_ray.policy import lm

pytestmark = [
    pytest.mark.integration, pytest.mark.timeout(300),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python not installed (the local-llm extra)"),
]


def _get(url: str, key: str = "") -> int:
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _listen_addresses(port: int) -> set[str]:
    """The local addresses listening on TCP `port` (from /proc/net/tcp and tcp6)."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


@pytest.fixture
def server(monkeypatch):
    # What a container's environment often holds: the server must not take it as its
    # listen address, port or key.
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("API_KEY", "inherited")
    srv = lm.EmbeddedServer(lm.smollm2_path(), threads=1)
    srv.start()
    yield srv
    srv.stop()


def test_the_server_requires_its_own_key_and_listens_on_loopback_only(server):
    models = f"{server.url}/models"
    assert server.url.startswith("http://127.0.0.1:")
    assert _get(models) == 401
    assert _get(models, "inherited") == 401
    assert _get(models, server.api_key) == 200
    assert _listen_addresses(server.port) == {"0100007F"}        # 127.0.0.1, nothing else
    assert server._proc is not None
    cmdline = open(f"/proc/{server._proc.pid}/cmdline", "rb").read()
    assert server.api_key.encode() not in cmdline                 # readable by any user
    other = lm.EmbeddedServer(lm.smollm2_path(), threads=1)
    assert other.api_key != server.api_key                        # one key per server


def test_the_client_endpoint_carries_the_key(monkeypatch):
    monkeypatch.setattr(lm, "_embedded", {})
    ep = lm.resolve(PolicyConfig(), threads=1)
    try:
        assert ep.secret and ep.redact(f"key {ep.api_key}") == "key ***"
        assert _get(f"{ep.url}/models", ep.api_key) == 200 and _get(f"{ep.url}/models") == 401
    finally:
        lm._stop_embedded()


class _Impostor(BaseHTTPRequestHandler):
    """Another program on the port SAIR picked: a keyless OpenAI-style server serving a
    model of the same name to anyone."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": lm.EMBEDDED_MODEL_NAME}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_port_taken_by_another_server_is_not_mistaken_for_ours(monkeypatch):
    impostor = HTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    taken = impostor.server_address[1]
    real_free_port = lm._free_port
    picks = iter([taken])
    monkeypatch.setattr(lm, "_free_port", lambda: next(picks, None) or real_free_port())
    srv = lm.EmbeddedServer(lm.smollm2_path(), threads=1)
    try:
        srv.start()
        assert srv.port != taken
        assert _get(f"{srv.url}/models", srv.api_key) == 200 and _get(f"{srv.url}/models") == 401
    finally:
        srv.stop()
        impostor.shutdown()


def _start_and_report_pid() -> int:
    srv = lm.embedded_server(lm.smollm2_path(), threads=1)
    assert srv.running
    return srv._proc.pid  # type: ignore[union-attr]


def test_a_bench_workers_server_stops_when_the_worker_exits():
    # `sair bench --workers N` runs controllers in pool workers, which leave through
    # os._exit: atexit never ran there and every worker's llama.cpp server outlived the bench
    import os
    from concurrent.futures import ProcessPoolExecutor

    import psutil

    with ProcessPoolExecutor(max_workers=1) as ex:
        pid = ex.submit(_start_and_report_pid).result(timeout=120)
        assert psutil.pid_exists(pid)
    gone, alive = psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [],
                                    timeout=15)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the worker's embedded server outlived it"

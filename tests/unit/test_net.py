"""Credentials go only over https or to this machine, and never along a redirect to
another origin (sair_ray/net.py), for every client that carries them: the Ray dashboard
(tests/live/test_ray_serve_backend_unit.py), Prometheus and the policy LLM's endpoint."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sair_ray import net
from sair_ray.config import PolicyConfig
from sair_ray.observe.prometheus import MetricsReadError, PrometheusServer
from sair_ray.policy.lm import LMUnavailable, resolve


@pytest.fixture(autouse=True)
def strict(monkeypatch):
    monkeypatch.delenv(net.ALLOW_PLAIN_HTTP_ENV, raising=False)


@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://127.0.0.1:8265",
                                 "http://localhost:8000/v1", "http://[::1]:9090",
                                 "http://127.0.0.2:1"])
def test_https_and_this_machine_may_carry_credentials(url):
    net.check_credentials_url(url, "a key")


@pytest.mark.parametrize("url", ["http://203.0.113.9:8265", "http://198.51.100.7/v1",
                                 "ftp://127.0.0.1/x", "file:///etc/passwd"])
def test_elsewhere_plain_http_and_other_schemes_may_not(url):
    with pytest.raises(net.InsecureURL):
        net.check_credentials_url(url, "a key")


def test_plain_http_is_allowed_only_when_asked(monkeypatch):
    monkeypatch.setenv(net.ALLOW_PLAIN_HTTP_ENV, "1")
    net.check_credentials_url("http://203.0.113.9:8265", "a key")
    with pytest.raises(net.InsecureURL):   # never other schemes
        net.check_credentials_url("file:///etc/passwd", "a key")


def _own_ipv4() -> list[str]:
    """This machine's non-loopback IPv4 addresses (the kernel's local routes)."""
    try:
        lines = open("/proc/net/fib_trie").read().splitlines()
    except OSError:
        return []
    return sorted({prev.split()[-1] for prev, line in zip(lines, lines[1:], strict=False)
                   if "/32 host LOCAL" in line and not prev.split()[-1].startswith("127.")})


def test_an_address_of_this_machine_counts_as_local():
    own = _own_ipv4()
    if not own:
        pytest.skip("this machine has no non-loopback address")
    assert all(net.is_local_host(ip) for ip in own)
    net.check_credentials_url(f"http://{own[0]}:8265", "a key")  # the head's own IP


class _Echo(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/go"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/go?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        _Echo.seen.append(self.headers["Authorization"])
        body = b'{"status": "success", "data": {"resultType": "vector", "result": []}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo():
    servers = [HTTPServer(("127.0.0.1", 0), _Echo) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    _Echo.seen.clear()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()


def test_credentials_are_dropped_on_a_redirect_to_another_origin(echo):
    a, b = echo
    for target, expect in ((f"{b}/x", None), (f"{a}/x", "Bearer k")):
        req = net.urllib.request.Request(f"{a}/go?to={target}",
                                         headers={"Authorization": "Bearer k"})
        with net.urlopen(req, timeout=5) as r:
            assert r.status == 200
        assert _Echo.seen[-1] == expect
    with pytest.raises(net.InsecureURL):
        net.urlopen("file:///etc/passwd", timeout=5)


def test_prometheus_credentials_follow_the_same_rules(echo, monkeypatch):
    with pytest.raises(MetricsReadError, match="clear text"):
        PrometheusServer("http://203.0.113.9:9090", headers={"Authorization": "Bearer k"})
    PrometheusServer("http://203.0.113.9:9090")   # no credentials: nothing to protect
    a, b = echo
    prom = PrometheusServer(f"{a}/go?to={b}", headers={"Authorization": "Bearer k"})
    prom.url = f"{a}/go?to={b}"
    assert prom.query("up", 0.0) == [] and _Echo.seen[-1] is None


def test_an_llm_api_key_goes_only_over_https_or_to_this_machine(monkeypatch):
    monkeypatch.setenv("SAIR_TEST_KEY", "sk-secret-123")
    cfg = PolicyConfig(backend="vllm", url="http://203.0.113.9:8000", model="m",
                       api_key_env="SAIR_TEST_KEY")
    with pytest.raises(LMUnavailable, match="clear text") as e:
        resolve(cfg)
    assert "sk-secret-123" not in str(e.value)
    for url in ("https://203.0.113.9:8000", "http://127.0.0.1:8000"):
        ep = resolve(PolicyConfig(backend="vllm", url=url, model="m",
                                  api_key_env="SAIR_TEST_KEY"))
        assert ep.api_key == "sk-secret-123" and ep.secret
    monkeypatch.setenv(net.ALLOW_PLAIN_HTTP_ENV, "1")
    assert resolve(cfg).api_key == "sk-secret-123"
    monkeypatch.delenv("SAIR_TEST_KEY")
    assert not resolve(cfg).secret   # no key: plain http anywhere is fine

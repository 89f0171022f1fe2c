"""RayServeBackend's pure parts against a Serve details reply captured from a real
Ray 2.60 cluster (fixtures/serve_details.json), and ServeAdmin against a real HTTP server.
The live behaviour is covered by test_live_integration.py."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from sair_ray.backends.ray_serve import (
    MB,
    AppView,
    RayServeBackend,
    ServeAdmin,
    ServeAdminError,
    ServeSetupError,
    build_config_update,
    check_app,
)
from sair_ray.profiles import load_profile

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = FIXTURES / "tiny_pipeline.yaml"


@pytest.fixture
def details() -> dict:
    return json.loads((FIXTURES / "serve_details.json").read_text())


def test_app_view_reads_replicas_resources_and_pids(details: dict) -> None:
    v = AppView.from_details(details, "tiny_pipeline")
    assert v.declarative and v.external_scaler_enabled
    pre, post = v.deployments["pre"], v.deployments["post"]
    assert pre.target_replicas == 2 and pre.running_replicas == 2 and len(pre.pids) == 2
    assert pre.num_cpus == 0.25 and pre.memory_mb is None and pre.shim_socket is None
    assert post.num_cpus == 0.5 and post.memory_mb == 384


def test_unknown_app_names_the_running_ones(details: dict) -> None:
    with pytest.raises(ServeSetupError, match=r"'nope'.*running applications: tiny_pipeline"):
        AppView.from_details(details, "nope")


def test_app_without_external_scaler_is_refused(details: dict) -> None:
    details["applications"]["tiny_pipeline"]["external_scaler_enabled"] = False
    v = AppView.from_details(details, "tiny_pipeline")
    with pytest.raises(ServeSetupError, match="external_scaler_enabled: true"):
        check_app(v, load_profile(PROFILE).pipeline)


def test_profile_stage_without_deployment_is_refused(details: dict) -> None:
    del details["applications"]["tiny_pipeline"]["deployments"]["post"]
    v = AppView.from_details(details, "tiny_pipeline")
    with pytest.raises(ServeSetupError, match=r"no deployment\(s\) post.*Ingress, pre"):
        check_app(v, load_profile(PROFILE).pipeline)


def test_config_update_changes_only_the_named_deployment(details: dict) -> None:
    other = copy.deepcopy(details["applications"]["tiny_pipeline"])
    other["name"] = other["deployed_app_config"]["name"] = "other"
    details["applications"]["other"] = other
    imperative = copy.deepcopy(other)
    imperative["source"], imperative["deployed_app_config"] = "imperative", None
    details["applications"]["imp"] = imperative
    opts = {"num_cpus": 0.75, "memory": 512 * MB}
    cfg = build_config_update(details, "tiny_pipeline",
                              {"pre": {"num_replicas": 2, "ray_actor_options": opts}})
    apps = {a["name"]: a for a in cfg["applications"]}
    # every declarative app is carried over (a PUT deletes the ones it omits); the
    # imperative one is not part of a declarative config
    assert set(apps) == {"tiny_pipeline", "other"}
    assert apps["other"] == details["applications"]["other"]["deployed_app_config"]
    deps = {d["name"]: d for d in apps["tiny_pipeline"]["deployments"]}
    assert deps["pre"] == {"name": "pre", "num_replicas": 2, "ray_actor_options": opts}
    assert deps["post"] == details["applications"]["tiny_pipeline"]["deployed_app_config"][
        "deployments"][1]
    assert cfg["http_options"]["port"] == details["http_options"]["port"]


def test_config_update_refuses_imperative_app(details: dict) -> None:
    app = details["applications"]["tiny_pipeline"]
    app["source"], app["deployed_app_config"] = "imperative", None
    with pytest.raises(ServeSetupError, match="deployed imperatively"):
        build_config_update(details, "tiny_pipeline", {"pre": {"num_replicas": 1}})


class _Handler(BaseHTTPRequestHandler):
    bodies: list = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers["Content-Length"])
        _Handler.bodies.append((self.path, json.loads(self.rfile.read(n))))
        code = 412 if "locked" in self.path else 500 if "crash" in self.path else 200
        body = (b'{"error": "external scaler disabled"}' if code == 412 else
                b"Traceback (most recent call last):\n" + b"  frame\n" * 400
                + b"RuntimeError: the cause" if code == 500 else b'{"message": "ok"}')
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> str:
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_admin_scale_posts_the_external_scaler_request(server: str) -> None:
    ServeAdmin(server).scale("my app", "pre", 3)
    path, body = _Handler.bodies[-1]
    assert path == "/api/v1/applications/my%20app/deployments/pre/scale"
    assert body == {"target_num_replicas": 3}


def test_admin_errors_carry_status_and_reason(server: str) -> None:
    with pytest.raises(ServeAdminError, match="HTTP 412.*external scaler disabled"):
        ServeAdmin(server).scale("locked", "pre", 2)
    with pytest.raises(ServeAdminError, match="cannot reach the Ray dashboard"):
        ServeAdmin("127.0.0.1:9", timeout_s=2).details()
    # a long traceback keeps its start and its end, where the cause is
    with pytest.raises(ServeAdminError) as e:
        ServeAdmin(server).scale("crash", "pre", 2)
    msg = str(e.value)
    assert "HTTP 500: Traceback" in msg and msg.endswith("RuntimeError: the cause")
    assert "characters ...]" in msg and len(msg) < 1700


def test_a_round_reads_the_dashboard_once(details: dict) -> None:
    """sync, observe and apply of one round share one read of the Serve details."""
    from sair_ray.backends.metrics import AppWindow

    class Admin:
        reads = 0

        def details(self) -> dict:
            Admin.reads += 1
            return copy.deepcopy(details)

        def scale(self, app: str, deployment: str, replicas: int) -> None:
            details["applications"][app]["deployments"][deployment][
                "target_num_replicas"] = replicas

    class Metrics:
        def window(self, start: float, end: float) -> AppWindow:
            return AppWindow("tiny_pipeline", start, end)

    res = ({"CPU": 8.0, "memory": 8192.0 * MB}, {"CPU": 4.0, "memory": 4096.0 * MB})
    b = RayServeBackend("tiny_pipeline", profile=PROFILE, admin=Admin(),  # type: ignore
                        metrics=Metrics(), resources=lambda: res)
    for now in (30.0, 60.0):
        before = Admin.reads
        b.sync(now)
        ctx = b.observe(now - 30, now)
        pre = ctx.allocation["pre"]
        b.apply({"pre": type(pre)(pre.replicas + 1, pre.cpu_m, pre.mem_mb)}, now)
        assert Admin.reads - before == 1
    assert Admin.reads == 3 and not b.external_changes  # each round saw SAIR's last change


def test_serve_native_app_is_accepted_and_recognised() -> None:
    """An app deployed with the SAIR policy (docs/live.md, Serve-native mode) needs no
    external scaler; any other app without one is refused with both fixes named."""
    from sair_ray.backends.ray_serve import AppView, ServeSetupError, check_app
    from sair_ray.profiles import load_profile

    pipeline = load_profile(Path(__file__).parent / "fixtures" / "tiny_pipeline.yaml").pipeline
    deps = {n: {"name": n} for n in ("pre", "post")}

    def view(cfg: dict) -> AppView:
        return AppView.from_details({"applications": {"tiny_pipeline": {
            "source": "declarative", "deployments": deps, "deployed_app_config": cfg}}},
            "tiny_pipeline")

    native = view({"autoscaling_policy": {"policy_function": "sair_ray.serve:SAIRPolicy"}})
    assert native.serve_native
    check_app(native, pipeline)
    other = view({"autoscaling_policy": {"policy_function": "mine:Policy"}})
    assert not other.serve_native
    with pytest.raises(ServeSetupError, match="external_scaler_enabled.*SAIRPolicy"):
        check_app(other, pipeline)


def _backend_with(details: dict, admin_cls: type, **kw) -> RayServeBackend:
    from sair_ray.backends.metrics import AppWindow

    class Metrics:
        def window(self, start: float, end: float) -> AppWindow:
            return AppWindow("tiny_pipeline", start, end)

    res = ({"CPU": 8.0, "memory": 8192.0 * MB}, {"CPU": 4.0, "memory": 4096.0 * MB})
    return RayServeBackend("tiny_pipeline", admin=admin_cls(), metrics=Metrics(),
                           resources=lambda: res, **kw)


def test_a_redeploy_is_rebuilt_when_someone_deploys_while_it_is_prepared(details) -> None:
    """A config PUT replaces every app: one built from details that changed before the
    write would undo the change, so it is rebuilt from the new details."""
    other = copy.deepcopy(details["applications"]["tiny_pipeline"])
    other["name"] = other["deployed_app_config"]["name"] = "other"
    details["applications"]["other"] = other
    puts: list[dict] = []

    class Admin:
        reads = 0

        def details(self) -> dict:
            Admin.reads += 1
            if Admin.reads == 3:   # a user's `serve deploy` of `other` lands right now
                other["deployed_app_config"]["route_prefix"] = "/new"
                other["last_deployed_time_s"] = 2e9
            return copy.deepcopy(details)

        def deploy(self, config: dict) -> None:
            puts.append(config)

    b = _backend_with(details, Admin, profile=PROFILE)
    pre = b.observe(0, 30).allocation["pre"]
    b.apply({"pre": type(pre)(pre.replicas, pre.cpu_m + 250, pre.mem_mb)}, 30)
    assert len(puts) == 1 and not b.actuation_errors
    sent = {a["name"]: a for a in puts[0]["applications"]}
    assert sent["other"]["route_prefix"] == "/new"     # the user's change is kept


def test_a_redeploy_is_skipped_while_the_config_keeps_changing(details) -> None:
    puts: list[dict] = []

    class Admin:
        reads = 0

        def details(self) -> dict:
            Admin.reads += 1
            d = copy.deepcopy(details)
            d["applications"]["tiny_pipeline"]["last_deployed_time_s"] = Admin.reads
            return d

        def deploy(self, config: dict) -> None:
            puts.append(config)

    b = _backend_with(details, Admin, profile=PROFILE)
    pre = b.observe(0, 30).allocation["pre"]
    b.apply({"pre": type(pre)(pre.replicas, pre.cpu_m + 250, pre.mem_mb)}, 30)
    assert puts == []
    assert [e.what for e in b.actuation_errors] == ["resources"]
    assert "kept changing" in b.actuation_errors[0].error


def test_an_app_without_a_profile_is_read_from_serve(details) -> None:
    from sair_ray.config import PipelineConfig

    class Admin:
        def details(self) -> dict:
            return copy.deepcopy(details)

    with pytest.raises(ServeSetupError, match="--sla-ms"):
        _backend_with(details, Admin)
    b = _backend_with(details, Admin, options=PipelineConfig(sla_ms=400))
    assert b.pipeline.sla_ms == 400 and b.pipeline_source == "discovered from Serve"
    assert set(b.pipeline.stage_names) == set(details["applications"]["tiny_pipeline"][
        "deployments"])
    b = _backend_with(details, Admin, options=PipelineConfig(sla_ms=400, stages="pre,post"))
    assert b.pipeline.stage_names == ("pre", "post")
    # a profile's SLA can be overridden from the config
    b = _backend_with(details, Admin, profile=PROFILE, options=PipelineConfig(sla_ms=123))
    assert b.pipeline.sla_ms == 123 and b.pipeline_source.startswith("profile ")


def test_after_a_clock_step_the_metrics_are_read_on_the_replicas_clock(details: dict) -> None:
    """A live loop keeps round times on a SteadyClock; the replicas stamp their metrics
    with the (stepped) wall clock, so the backend asks for each window at the round's
    times plus the clock's wall offset."""
    from sair_ray.backends.metrics import AppWindow

    class Admin:
        def details(self) -> dict:
            return copy.deepcopy(details)

    asked: list[tuple[float, float]] = []

    class Metrics:
        def window(self, start: float, end: float) -> AppWindow:
            asked.append((start, end))
            return AppWindow("tiny_pipeline", start, end)

    offset = [0.0]
    res = ({"CPU": 8.0, "memory": 8192.0 * MB}, {"CPU": 4.0, "memory": 4096.0 * MB})
    b = RayServeBackend("tiny_pipeline", profile=PROFILE, admin=Admin(),  # type: ignore
                        resources=lambda: res, wall_offset=lambda: offset[0])
    b._metrics_source = Metrics   # type: ignore[method-assign]  # instead of the app's actor
    assert b.observe(30.0, 60.0).time == 60.0 and asked[-1] == (30.0, 60.0)
    offset[0] = -3600.0           # the system clock was stepped back an hour
    assert b.observe(60.0, 90.0).time == 90.0 and asked[-1] == (60.0 - 3600, 90.0 - 3600)


class _Redirect(BaseHTTPRequestHandler):
    """GET /elsewhere -> 307 to `target`; GET /here -> 307 to /api/serve/applications/ on
    this server; anything else answers {} and records the Authorization it got."""

    target = ""
    seen: list[tuple[int, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith(("/elsewhere", "/here")):
            self.send_response(307)
            self.send_header("Location", self.target if self.path.startswith("/elsewhere")
                             else "/api/serve/applications/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        _Redirect.seen.append((self.server.server_address[1], self.headers["Authorization"]))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def two_servers():
    servers = [HTTPServer(("127.0.0.1", 0), _Redirect) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()


def test_the_ray_token_never_follows_a_redirect_to_another_host(two_servers, monkeypatch):
    import sair_ray.backends.ray_serve as rs

    monkeypatch.setattr(rs, "_ray_auth_headers",
                        lambda: {"Authorization": "Bearer ray-secret-token"})
    a, b = two_servers
    _Redirect.target = f"http://127.0.0.1:{b}/api/serve/applications/"
    _Redirect.seen.clear()
    ServeAdmin(f"127.0.0.1:{a}")._request("GET", "/elsewhere")
    assert _Redirect.seen == [(b, None)]          # followed, without the token
    ServeAdmin(f"127.0.0.1:{a}")._request("GET", "/here")
    assert _Redirect.seen[-1] == (a, "Bearer ray-secret-token")   # same origin: kept


def test_the_ray_token_goes_in_clear_text_only_to_this_machine(monkeypatch):
    import sair_ray.backends.ray_serve as rs

    monkeypatch.setattr(rs, "_ray_auth_headers",
                        lambda: {"Authorization": "Bearer ray-secret-token"})
    import urllib.error

    from sair_ray import net

    sent: list[str] = []

    class Offline:   # no request leaves the test: record it and fail it
        def open(self, req, timeout):
            sent.append(req.full_url)
            raise urllib.error.URLError("offline test")

    monkeypatch.setattr(net, "_opener", Offline)
    monkeypatch.delenv("SAIR_ALLOW_PLAIN_HTTP", raising=False)
    with pytest.raises(ServeAdminError, match="clear text.*SAIR_ALLOW_PLAIN_HTTP") as e:
        ServeAdmin("http://203.0.113.9:8265", timeout_s=1).details()
    assert "ray-secret-token" not in str(e.value) and sent == []   # never tried
    with pytest.raises(ServeAdminError, match="cannot reach the Ray dashboard"):
        ServeAdmin("https://203.0.113.9:8265", timeout_s=1).details()   # https: sent
    monkeypatch.setenv("SAIR_ALLOW_PLAIN_HTTP", "1")   # explicitly allowed: it is tried
    with pytest.raises(ServeAdminError, match="cannot reach the Ray dashboard"):
        ServeAdmin("http://203.0.113.9:8265", timeout_s=1).details()
    assert sent == ["https://203.0.113.9:8265/api/serve/applications/",
                    "http://203.0.113.9:8265/api/serve/applications/"]


def test_auto_metrics_take_the_meter_once_it_runs(details: dict, monkeypatch) -> None:
    """'auto' with no StageMeter actor yet (an app that has served nothing) reads Serve's
    metrics, and looks again: once the app's metrics actor runs, it is read instead."""
    import sair_ray.backends.serve_metrics as sm
    import sair_ray.observe as observe

    running = [False]

    class Client:
        def __init__(self, app: str) -> None:
            if not running[0]:
                raise observe.MetricsUnavailable(f"no metrics actor for {app}")

    class Admin:
        def details(self) -> dict:
            return copy.deepcopy(details)

    serve_source = object()
    monkeypatch.setattr(observe, "MetricsClient", Client)
    monkeypatch.setattr(sm, "serve_metrics_source", lambda *a, **kw: serve_source)
    res = ({"CPU": 8.0, "memory": 8192.0 * MB}, {"CPU": 4.0, "memory": 4096.0 * MB})
    b = RayServeBackend("tiny_pipeline", profile=PROFILE, admin=Admin(),  # type: ignore
                        resources=lambda: res)
    b.sync(30.0)
    assert b.metrics is serve_source
    b.METER_RECHECK_S = 0.0          # look again at every read
    assert b.metrics is serve_source  # still no actor: the fallback is kept
    running[0] = True
    assert isinstance(b.metrics, Client)
    assert isinstance(b.metrics, Client)  # and kept from then on


@pytest.mark.parametrize("shim", [False, True])
def test_a_gpu_stage_without_the_shim_has_its_rate_pinned(details: dict, shim: bool) -> None:
    """A GPU deployment whose replicas load no cuda_tb shim cannot have its rate moved:
    the stage's rate range collapses to 1.0, so no rate change is proposed and none
    fails to actuate (each failure would still start the stage's cooldown)."""
    from sair_ray.config import PipelineConfig, SAIRConfig
    from sair_ray.types import ClusterResources, StageAllocation
    from sair_ray.validator import Validator

    opts = details["applications"]["tiny_pipeline"]["deployments"]["pre"][
        "deployment_config"]["ray_actor_options"]
    opts["num_gpus"] = 1
    if shim:
        opts["runtime_env"]["env_vars"]["CUDA_TB_SOCKET"] = "/tmp/sair-gpu/cuda_tb-%p.sock"

    class Admin:
        def details(self) -> dict:
            return copy.deepcopy(details)

    b = _backend_with(details, Admin, options=PipelineConfig(sla_ms=400))
    spec, v = b.pipeline.stage("pre"), SAIRConfig().validator
    assert spec.is_gpu
    lim = spec.limits(v)
    assert (lim.rate_min, lim.rate_max) == ((v.rate_min, v.rate_max) if shim else (1.0, 1.0))
    cur = {s.name: s.initial for s in b.pipeline.stages} | {
        "pre": StageAllocation(1, 250, 256, 1.0)}
    out = Validator(b.pipeline, v).validate(
        {"pre": {"action": "adjust_rate", "rate_ratio": 0.5}}, cur, now=0.0,
        free=ClusterResources(64, 262144, 4))
    assert out.action.delta("pre").rate == (-v.max_rate_step if shim else 0.0)

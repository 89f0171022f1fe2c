"""Live-test helpers: deploying the tiny pipeline's Serve config (on a private Ray from
tests/ray_harness.py), and an open-loop HTTP load driver that accounts for every request
it sends."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.ray_harness import free_port

REPO = Path(__file__).resolve().parents[2]
HTTP_PORT = free_port()  # Serve's HTTP proxy for the tiny pipeline


def tiny_config(*, pre_ms: float = 100, external_scaler: bool = True, name: str =
                "tiny_pipeline", replicas: dict[str, int] | None = None) -> dict:
    replicas = replicas or {}
    return {
        "http_options": {"host": "127.0.0.1", "port": HTTP_PORT},
        "applications": [{
            "name": name, "route_prefix": f"/{name}",
            "import_path": "tests.live.fixtures.tiny_pipeline:app",
            "external_scaler_enabled": external_scaler,
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO),
                                         "SAIR_TINY_PRE_MS": str(pre_ms)}},
            "deployments": [{"name": d, "num_replicas": replicas.get(d, 1)}
                            for d in ("pre", "post")]}]}


def wait_running(admin: object, app: str, timeout_s: float = 120) -> dict:
    deadline = time.time() + timeout_s
    while True:
        apps = admin.details().get("applications", {})  # type: ignore[attr-defined]
        a = apps.get(app)
        if a and a.get("status") == "RUNNING":
            return a
        if time.time() > deadline:
            raise TimeoutError(f"app {app!r} not RUNNING after {timeout_s} s: "
                               f"{a and a.get('status')} {a and a.get('message')}")
        time.sleep(1)


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    http_errors: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # no HTTP answer at all
    latencies_s: list[tuple[float, float]] = field(default_factory=list)  # (sent at, latency)

    @property
    def answered(self) -> int:
        return self.ok + sum(self.http_errors.values())


def drive(url: str, rate: float, duration_s: float, seed: int = 0,
          timeout_s: float = 120, stop: threading.Event | None = None) -> LoadResult:
    """Poisson arrivals at `rate`/s for `duration_s` (or until `stop` is set: a test whose
    checks all passed need not wait out the rest), open loop; waits for every answer."""
    import aiohttp

    res = LoadResult()
    rng = np.random.default_rng(seed)

    async def one(session: aiohttp.ClientSession) -> None:
        t0 = time.time()
        try:
            async with session.get(url) as r:
                await r.read()
                if r.status == 200:
                    res.ok += 1
                else:
                    res.http_errors[r.status] = res.http_errors.get(r.status, 0) + 1
            res.latencies_s.append((t0, time.time() - t0))
        except Exception as e:  # no answer: what "lost" means
            res.failures.append(repr(e))

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        tmo = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=tmo) as session:
            tasks, t, start = [], 0.0, time.time()
            while True:
                t += rng.exponential(1 / rate)
                if t >= duration_s or (stop is not None and stop.is_set()):
                    break
                await asyncio.sleep(max(0.0, start + t - time.time()))
                tasks.append(asyncio.create_task(one(session)))
                res.sent += 1
            await asyncio.gather(*tasks)

    asyncio.run(main())
    return res

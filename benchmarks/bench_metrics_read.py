"""One round's metrics read with `ServeMetrics` (sair_ray/backends/serve_metrics.py) on a
real local Ray: the time `window()` takes to scrape every node's metrics agent, parse the
Serve series and build the `AppWindow` (the live loop does this once a round).

    .venv/bin/python benchmarks/bench_metrics_read.py [--reads 200] [--every 0.2]
        [--rate 5] [--quick] [--json FILE]

A 3-deployment plain app (`stage0 -> stage1 -> stage2`, each an asyncio sleep of
`--work-ms`; no sair-ray code in it) runs under open-loop HTTP load at `--rate` req/s, so
the counters move between reads. Ray is started here (2 logical CPUs, the metrics agent on
a free port, Ray's metrics report interval 1 s) unless this process is already connected
to one (tests/live/test_bench_metrics_read.py passes its private Ray). Prints a Markdown
table of p50/p99/max in milliseconds; target p99 <= 100 ms. --quick: 20 reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
import urllib.request
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

APP = "bench_metrics"
STAGES = ["stage0", "stage1", "stage2"]
TARGET_P99_MS = 100.0
WORK_MS = float(os.environ.get("BENCH_WORK_MS", "20"))


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Last:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(WORK_MS / 1000)
        return x + 1


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Middle:
    def __init__(self, nxt: DeploymentHandle) -> None:
        self.nxt = nxt

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(WORK_MS / 1000)
        return await self.nxt.remote(x + 1)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class First:
    def __init__(self, nxt: DeploymentHandle) -> None:
        self.nxt = nxt

    async def __call__(self, request: Any) -> dict[str, int]:
        await asyncio.sleep(WORK_MS / 1000)
        return {"result": await self.nxt.remote(1)}


def build_app() -> Any:
    last = Last.options(name="stage2").bind()
    return First.options(name="stage0").bind(Middle.options(name="stage1").bind(last))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Open-loop GETs at `rate`/s (one thread per request, fire and forget)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _one(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as r:
                r.read()
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.rate):
            threading.Thread(target=self._one, daemon=True).start()
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between reads")
    ap.add_argument("--rate", type=float, default=5.0, help="HTTP requests per second")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    reads = 20 if a.quick else a.reads

    import ray

    from sair_ray.backends.serve_metrics import serve_metrics_source

    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 _metrics_export_port=free_port(),
                 _system_config={"metrics_report_interval_ms": 1000},
                 log_to_driver=False, logging_level="ERROR")
    load = None
    try:
        http_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(), name=APP, route_prefix=f"/{APP}")
        url = f"http://127.0.0.1:{http_port}/{APP}"
        load = Load(url, a.rate)
        sm = serve_metrics_source(APP, STAGES, "stage0")
        sm.window(0, time.time())                     # the first read: nothing to diff
        time.sleep(2.0)
        times_ms, fetch_ms, parse_ms, series, partial, size = [], [], [], 0, 0, 0
        arrivals = 0
        for _ in range(reads):
            time.sleep(a.every)
            t = time.perf_counter()
            w = sm.window(0, time.time())
            times_ms.append(1000 * (time.perf_counter() - t))
            assert sm.agents is not None
            f_ms, p_ms, size = next(iter(sm.agents.timings.values()))
            fetch_ms.append(f_ms)
            parse_ms.append(p_ms)
            arrivals += w.arrivals
            partial += bool(w.partial)
            assert sm._last is not None
            series = sum(len(s) for s in sm._last.families.values())
        sm.close()
    finally:
        if load is not None:
            load.stop()
        serve.shutdown()
        if own:
            ray.shutdown()
    r = {"reads": reads, "p50_ms": statistics.median(times_ms), "p99_ms": pct(times_ms, 0.99),
         "max_ms": max(times_ms), "series_kept": series, "nodes": 1, "scrape_bytes": size,
         "agent_http_p50_ms": statistics.median(fetch_ms),
         "agent_http_p99_ms": pct(fetch_ms, 0.99), "parse_p50_ms": statistics.median(parse_ms),
         "parse_p99_ms": pct(parse_ms, 0.99),
         "arrivals_seen": arrivals, "requests_sent": load.sent if load else 0,
         "partial_windows": partial, "target_p99_ms": TARGET_P99_MS}
    r["target_met"] = r["p99_ms"] <= TARGET_P99_MS
    print(f"ServeMetrics.window(), {len(STAGES)} deployments, direct agents, 1 node, "
          f"{a.rate:g} req/s, {reads} reads; scrape {size / 1024:.0f} KiB, {series} series kept")
    print("| part | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    print(f"| window() total | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    print(f"| agent HTTP GET /metrics | {r['agent_http_p50_ms']:.1f} | "
          f"{r['agent_http_p99_ms']:.1f} | {max(fetch_ms):.1f} |")
    print(f"| parse (kept families) | {r['parse_p50_ms']:.1f} | {r['parse_p99_ms']:.1f} | "
          f"{max(parse_ms):.1f} |")
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if r['target_met'] else 'NOT met'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()

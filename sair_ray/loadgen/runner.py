"""Open-loop HTTP load with bounded concurrency, and an account of every request.

Each planned request ends in exactly one `RequestResult` with one status:

    ok          the server answered 2xx
    http_error  the server answered, with another status (kept in `http_status`)
    timeout     no complete answer within `timeout_s` of sending
    conn_error  the connection failed (refused, reset, protocol error: text in `error`)
    not_sent    never sent: the run stopped (time limit or Ctrl-C) before its turn
    cancelled   in flight when the run was stopped

Requests are sent at their planned times unless `concurrency` requests are already in
flight; then the sender waits for a free slot and the wait is kept (`send_delay_ms`), so an
overloaded server shows up as client-side delay, not as silently thinner traffic.
This is a real-time runner: it sleeps on the asyncio loop; its clocks are injectable.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sair_ray.loadgen.plan import LoadPlan

STATUSES = ("ok", "http_error", "timeout", "conn_error", "not_sent", "cancelled")
NAN = float("nan")


@dataclass
class RequestResult:
    index: int
    scheduled_s: float               # planned send time, seconds from the start
    status: str = "not_sent"
    sent_s: float = NAN              # actual send time, seconds from the start
    sent_at: float = NAN             # actual send time, wall clock (time.time())
    latency_ms: float = NAN          # send -> complete answer read
    http_status: int = 0
    error: str = ""

    @property
    def send_delay_ms(self) -> float:
        return (self.sent_s - self.scheduled_s) * 1e3


@dataclass(frozen=True)
class Summary:
    planned: int
    sent: int
    counts: Mapping[str, int]
    p50_ms: float
    p99_ms: float
    mean_ms: float
    duration_s: float
    max_in_flight: int
    send_delay_p99_ms: float

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def errors(self) -> int:
        return self.counts.get("http_error", 0) + self.counts.get("conn_error", 0)

    @property
    def timeouts(self) -> int:
        return self.counts.get("timeout", 0)

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class LoadRunner:
    """Sends `plan` to `url`; `body(i)` gives request i's body (bytes).

    `time_limit_s` caps the whole run (default: plan duration + timeout): at the cap,
    requests not yet sent become `not_sent` and those in flight `cancelled`.
    """

    url: str
    plan: LoadPlan
    body: Callable[[int], bytes]
    concurrency: int = 64
    timeout_s: float = 30.0
    time_limit_s: float | None = None
    headers: Mapping[str, str] = field(
        default_factory=lambda: {"Content-Type": "application/json"})
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 s, got {self.timeout_s}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        self.results = [RequestResult(i, float(t)) for i, t in enumerate(self.plan.times)]
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = NAN
        self.finished = NAN
        self._stop: asyncio.Event | None = None

    def stop(self) -> None:
        """Stop sending (thread-unsafe; call from the loop, e.g. a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, on_result: Callable[[RequestResult], None] | None = None
                  ) -> list[RequestResult]:
        import aiohttp

        self._stop = asyncio.Event()
        limit = self.time_limit_s if self.time_limit_s is not None \
            else self.plan.duration_s + self.timeout_s
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self.started = self.clock()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            dispatcher = asyncio.create_task(
                self._dispatch(session, slots, tasks, on_result))
            stopper = asyncio.create_task(self._stop.wait())
            deadline = self.started + limit
            # 1) send on schedule until the plan is done, a stop, or the time limit
            await asyncio.wait({dispatcher, stopper}, timeout=limit,
                               return_when=asyncio.FIRST_COMPLETED)
            if not dispatcher.done():
                dispatcher.cancel()
                await asyncio.gather(dispatcher, return_exceptions=True)
            # 2) let in-flight requests finish, unless stopped or over the time limit
            while tasks and not stopper.done():
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                await asyncio.wait({*tasks, stopper}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        self.finished = self.clock()
        if on_result is not None:
            for r in self.results:
                if r.status == "not_sent":
                    on_result(r)
        return self.results

    async def _dispatch(self, session: object, slots: asyncio.Semaphore,
                        tasks: set[asyncio.Task[None]],
                        on_result: Callable[[RequestResult], None] | None) -> None:
        for res in self.results:
            delay = self.started + res.scheduled_s - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(self._send(session, res, slots, on_result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _send(self, session: object, res: RequestResult, slots: asyncio.Semaphore,
                    on_result: Callable[[RequestResult], None] | None) -> None:
        import aiohttp

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        res.sent_s = self.clock() - self.started
        res.sent_at = self.wall()
        t0 = self.clock()
        try:
            async with session.post(self.url, data=self.body(res.index),  # type: ignore[attr-defined]
                                    headers=dict(self.headers)) as resp:
                await resp.read()
                res.http_status = resp.status
                res.status = "ok" if 200 <= resp.status < 300 else "http_error"
                if res.status != "ok":
                    res.error = f"HTTP {resp.status}"
        except asyncio.CancelledError:
            res.status = "cancelled"
            raise
        except TimeoutError:  # aiohttp's timeouts subclass TimeoutError
            res.status = "timeout"
            res.error = f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientError as e:
            res.status, res.error = "conn_error", f"{type(e).__name__}: {e}"[:300]
        except Exception as e:  # anything else is still an explicit, counted failure
            res.status, res.error = "conn_error", f"{type(e).__name__}: {e}"[:300]
        finally:
            res.latency_ms = (self.clock() - t0) * 1e3
            self.in_flight -= 1
            slots.release()
            if on_result is not None:
                on_result(res)


def summarize(results: Sequence[RequestResult], duration_s: float,
              max_in_flight: int = 0) -> Summary:
    counts = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    ok = np.array([r.latency_ms for r in results if r.status == "ok"])
    delays = np.array([r.send_delay_ms for r in results if math.isfinite(r.sent_s)])
    sent = sum(1 for r in results if r.status != "not_sent")

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else NAN

    return Summary(planned=len(results), sent=sent, counts=counts, p50_ms=pct(ok, 50),
                   p99_ms=pct(ok, 99), mean_ms=float(ok.mean()) if len(ok) else NAN,
                   duration_s=duration_s, max_in_flight=max_in_flight,
                   send_delay_p99_ms=pct(delays, 99))

"""A real HTTP server (aiohttp, its own thread and event loop) for the load generator."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web


@dataclass
class ServerState:
    url: str = ""
    in_flight: int = 0
    max_in_flight: int = 0
    received: int = 0
    bodies: list[bytes] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerState]:
    state = ServerState()

    async def handle(request: web.Request) -> web.Response:
        state.received += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            body = await request.read()
            state.bodies.append(body)
            await asyncio.sleep(float(request.query.get("delay_ms", "0")) / 1e3)
            return web.json_response({"ok": True},
                                     status=int(request.query.get("status", "200")))
        finally:
            state.in_flight -= 1

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/echo", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box.append(runner)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10), "test HTTP server did not start"
    state.url = f"http://127.0.0.1:{port}/echo"
    yield state
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture()
def fresh(server: ServerState) -> ServerState:
    # A previous test's client may have given up on requests the server is still holding
    # (timeouts): wait for them, or they count in this test's concurrency.
    deadline = time.monotonic() + 30
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.in_flight == 0, f"{server.in_flight} requests still held by the test server"
    server.max_in_flight = 0
    server.received = 0
    server.bodies.clear()
    return server

"""A real HTTP server speaking the OpenAI chat-completions subset the policy uses.

Each test sets `behaviour` to a callable(request_json) -> (status, body | None, delay_s);
requests are recorded so tests can check what was sent (prompt order, schema, API key).

Header names are recorded case-insensitively, as HTTP defines them: the OpenAI SDK 3.63
(over httpx2) sends `authorization` in lower case, and a plain dict of the headers made
the bearer token look absent (`KeyError: 'Authorization'`) although it was on the wire.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[[dict[str, Any]], tuple[int, Any, float]]


class Headers(dict[str, str]):
    """Request headers with case-insensitive names (RFC 9110 5.1)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


def completion(content: str) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "test",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class Server:
    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda req: (200, completion("{}"), 0.0)
        self.requests: list[tuple[Headers, dict[str, Any]]] = []  # POSTs: (headers, body)
        self.gets: list[tuple[str, Headers]] = []                    # GETs: (path, headers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                outer.gets.append((self.path, Headers(self.headers.items())))
                self._send(200, {"data": [{"id": "test-model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((Headers(self.headers.items()), body))
                status, out, delay = outer.behaviour(body)
                time.sleep(delay)
                self._send(status, out)

            def _send(self, status: int, out: Any) -> None:
                data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@contextmanager
def serving() -> Iterator[Server]:
    s = Server()
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()

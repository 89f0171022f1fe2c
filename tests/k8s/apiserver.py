"""A real HTTP server speaking the subset of the Kubernetes API that SAIR uses.

No kube-apiserver, envtest, kwok or k3s binary can be installed from the package
registries these machines reach (checked: PyPI, npm and Debian have clients only), so the
tests run the real `kubernetes` Python client against this server on loopback. It follows
the apiserver's documented semantics for what SAIR touches:

- objects under `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/status]]`
  (custom resources and `apps/v1` deployments alike), cluster-wide lists under
  `/apis/{group}/{version}/{plural}`;
- GET, POST (create), PUT (replace), PATCH, DELETE; `resourceVersion` is a global counter;
  a write whose body carries a `metadata.resourceVersion` other than the stored one is
  refused with 409 Conflict (optimistic concurrency), as the apiserver does;
- PATCH as `application/merge-patch+json` (RFC 7386), `application/json-patch+json`
  (RFC 6902: add, replace, remove, test) and, for built-in kinds only,
  `application/strategic-merge-patch+json` (lists of objects merged by `name`, the rule
  for containers); custom resources refuse strategic merge with 415 like the apiserver;
- the `status` subresource: writes to the main resource ignore `.status`, writes to
  `/status` change only `.status`; `metadata.generation` counts spec changes;
- `?watch=true` streams newline-delimited JSON events (chunked) from `resourceVersion`
  (all current objects as ADDED when none is given), ends after `timeoutSeconds`, and
  answers a version older than its event history with an ERROR event of code 410.

The store is also reachable in-process (`server.store`) so a test can seed objects and
play "another client" writing concurrently (`store.before_next_write`), or make the
server slow to answer some requests (`store.stall`: an apiserver that hangs).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BUILTIN_GROUPS = {"apps", ""}
HISTORY = 1000  # watch events kept; older resourceVersions get 410 Gone


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int = 0  # the HTTP status answered (200 while a watch is still streaming)
    authorization: str = ""


@dataclass
class Store:
    objects: dict[tuple[Kind, str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, Kind, str, dict[str, Any]]] = field(default_factory=list)
    rv: int = 100
    cond: threading.Condition = field(default_factory=lambda: threading.Condition(
        threading.RLock()))
    closing: bool = False
    hooks: list[Callable[[Store, Kind, str, str], None]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    # (method, path) -> seconds to wait before answering (0: at once)
    stall: Callable[[str, str], float] | None = None

    # -- helpers for tests -----------------------------------------------------------------
    def before_next_write(self, fn: Callable[[Store, Kind, str, str], None]) -> None:
        """Run `fn(store, kind, namespace, name)` once, just before the next HTTP write
        is applied: a concurrent writer that wins the race."""
        with self.cond:
            self.hooks.append(fn)

    def get(self, kind: Kind, ns: str, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind.resource} "{name}" not found')
            return copy.deepcopy(obj)

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    # -- semantics ---------------------------------------------------------------------------
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, kind: Kind, etype: str, obj: dict[str, Any]) -> None:
        self.events.append((int(obj["metadata"]["resourceVersion"]), kind, etype,
                            copy.deepcopy(obj)))
        del self.events[:-HISTORY]
        self.cond.notify_all()

    def create(self, kind: Kind, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", "metadata.name: Required value")
            if (kind, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists",
                               f'{kind.resource} "{name}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), generation=1,
                        resourceVersion=self._bump(),
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.objects[(kind, ns, name)] = obj
            self._emit(kind, "ADDED", obj)
            return copy.deepcopy(obj)

    def write(self, kind: Kind, ns: str, name: str, new: dict[str, Any],
              subresource: str = "") -> dict[str, Any]:
        """Store `new` as the object's next version (the checks of a PUT or a PATCH)."""
        with self.cond:
            old = self.get(kind, ns, name)
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if sent_rv not in (None, "") and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {kind.resource} "{name}": '
                               "the object has been modified; please apply your changes to "
                               "the latest version and try again")
            if subresource == "status":
                result = copy.deepcopy(old)
                result["status"] = new.get("status")
            else:
                result = copy.deepcopy(new)
                # The status subresource owns .status; system metadata is not writable.
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
                result["metadata"] = {**(new.get("metadata") or {}),
                                      **{k: old["metadata"][k] for k in (
                                          "name", "namespace", "uid", "creationTimestamp",
                                          "generation")}}
                if result.get("spec") != old.get("spec"):
                    result["metadata"]["generation"] = old["metadata"]["generation"] + 1
            if result == old:
                return old  # a no-op write changes nothing, not even resourceVersion
            result["metadata"]["resourceVersion"] = self._bump()
            self.objects[(kind, ns, name)] = result
            self._emit(kind, "MODIFIED", result)
            return copy.deepcopy(result)

    def delete(self, kind: Kind, ns: str, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self.get(kind, ns, name)
            del self.objects[(kind, ns, name)]
            obj["metadata"]["resourceVersion"] = self._bump()
            self._emit(kind, "DELETED", obj)
            return obj

    def run_hooks(self, kind: Kind, ns: str, name: str) -> None:
        with self.cond:
            hooks, self.hooks = self.hooks, []
            for fn in hooks:
                fn(self, kind, ns, name)


# -- patch formats --------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """The part of strategic merge SAIR relies on: maps merge like RFC 7386, and lists of
    objects that all have a `name` (containers, ports, env) merge element-wise by name."""
    if isinstance(patch, list) and isinstance(target, list) and all(
            isinstance(x, dict) and "name" in x for x in patch + target):
        out = copy.deepcopy(target)
        for item in patch:
            idx = next((i for i, t in enumerate(out) if t["name"] == item["name"]), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = strategic_merge_patch(out[idx], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge_patch(out.get(k), v)
    return out


def json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 (add, replace, remove, test) on maps and lists."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op["value"]:
                raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace of missing path {op['path']}")
                parent[last] = op["value"]
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ApiError(422, "Invalid", f"unsupported json-patch op {kind!r}")
    return doc


# -- HTTP ---------------------------------------------------------------------------------------
def _route(path: str) -> tuple[Kind, str | None, str | None, str]:
    """(kind, namespace or None for cluster-wide, name or None, subresource)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] != ["apis"] or len(parts) < 4:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                        f"({path})")
    group, version, rest = parts[1], parts[2], parts[3:]
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, plural, tail = rest[1], rest[2], rest[3:]
    elif len(rest) == 1:
        ns, plural, tail = None, rest[0], []
    else:
        raise ApiError(404, "NotFound", f"no route for {path}")
    name = tail[0] if tail else None
    sub = tail[1] if len(tail) > 1 else ""
    if sub not in ("", "status") or len(tail) > 2:
        raise ApiError(404, "NotFound", f"no subresource {sub!r}")
    return Kind(group, version, plural), ns, name, sub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send_json(self, code: int, obj: Any) -> None:
        if self._req is not None:
            self._req.status = code
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        store = self.server.store
        self._req: Request | None = None
        try:
            body = self._body()
            with store.cond:
                self._req = Request(self.command, url.path, query, ctype, copy.deepcopy(body),
                                    authorization=self.headers.get("Authorization") or "")
                store.requests.append(self._req)
                stall = store.stall
            if stall is not None and (delay := stall(self.command, url.path)) > 0:
                time.sleep(delay)
            kind, ns, name, sub = _route(url.path)
            if self.command == "GET" and name is None:
                if query.get("watch") in ("true", "1"):
                    self._watch(kind, ns, query)
                else:
                    self._send_json(200, self._list(kind, ns))
                return
            if ns is None:
                raise ApiError(405, "MethodNotAllowed", "cluster-wide writes not supported")
            if self.command == "POST" and name is None:
                self._send_json(201, store.create(kind, ns, body))
                return
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{self.command} on a collection")
            if self.command == "GET":
                self._send_json(200, store.get(kind, ns, name))
                return
            store.run_hooks(kind, ns, name)
            if self.command == "PUT":
                self._send_json(200, store.write(kind, ns, name, body, sub))
            elif self.command == "PATCH":
                self._send_json(200, self._patch(kind, ns, name, sub, ctype, body))
            elif self.command == "DELETE":
                self._send_json(200, store.delete(kind, ns, name))
            else:
                raise ApiError(405, "MethodNotAllowed", self.command)
        except ApiError as e:
            self._send_json(e.code, e.status())
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self._send_json(400, ApiError(400, "BadRequest", repr(e)).status())

    def _patch(self, kind: Kind, ns: str, name: str, sub: str, ctype: str,
               body: Any) -> dict[str, Any]:
        store = self.server.store
        with store.cond:
            old = store.get(kind, ns, name)
            if ctype == "application/merge-patch+json":
                new = merge_patch(old, body)
            elif ctype == "application/json-patch+json":
                new = json_patch(old, body)
            elif ctype == "application/strategic-merge-patch+json":
                if kind.group not in BUILTIN_GROUPS:
                    raise ApiError(415, "UnsupportedMediaType",
                                   "the body of the request was in an unknown format - "
                                   "accepted media types include: application/json-patch+json"
                                   ", application/merge-patch+json, application/apply-patch+"
                                   "yaml")
                new = strategic_merge_patch(old, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
            # A patch that names no resourceVersion keeps the stored one (merge keeps it),
            # so it applies unconditionally to the current version, as on the apiserver.
            return store.write(kind, ns, name, new, sub)

    def _list(self, kind: Kind, ns: str | None) -> dict[str, Any]:
        store = self.server.store
        with store.cond:
            items = [copy.deepcopy(o) for (k, n, _), o in sorted(
                store.objects.items(), key=lambda kv: (kv[0][1], kv[0][2]))
                if k == kind and (ns is None or n == ns)]
            return {"apiVersion": f"{kind.group}/{kind.version}".lstrip("/"),
                    "kind": "List", "metadata": {"resourceVersion": str(store.rv)},
                    "items": items}

    def _chunk(self, obj: Any) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, kind: Kind, ns: str | None, query: dict[str, str]) -> None:
        store = self.server.store
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        if self._req is not None:
            self._req.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rv_param = query.get("resourceVersion") or "0"
        try:
            with store.cond:
                if rv_param == "0":
                    since = store.rv
                    initial = [o for (k, n, _), o in store.objects.items()
                               if k == kind and (ns is None or n == ns)]
                    for o in initial:
                        self._chunk({"type": "ADDED", "object": o})
                else:
                    since = int(rv_param)
                    oldest = store.events[0][0] if store.events else store.rv + 1
                    if since < oldest - 1 and since < store.rv:
                        self._chunk({"type": "ERROR", "object": ApiError(
                            410, "Expired", f"too old resource version: {since} "
                                            f"({oldest - 1})").status()})
                        return
                while not store.closing:
                    pending = [(rv, e, o) for rv, k, e, o in store.events
                               if rv > since and k == kind
                               and (ns is None or o["metadata"].get("namespace") == ns)]
                    for rv, etype, obj in pending:
                        self._chunk({"type": etype, "object": obj})
                        since = rv
                    since = max(since, store.rv) if not pending else since
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    store.cond.wait(min(left, 0.5))
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = Store()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,),
                                        name="test-apiserver",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that gave up on a stalled answer (a request timeout)
        super().handle_error(request, client_address)

    def stop(self) -> None:
        with self.store.cond:
            self.store.closing = True
            self.store.cond.notify_all()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

"""Refuse every network access that leaves the machine, and remember who tried.

`install()` patches the socket module in this process: `connect`, `connect_ex` and
`sendto` to an address that is not loopback, and name look-ups (`getaddrinfo`,
`gethostbyname`, `gethostbyname_ex`) of a host that is not loopback, raise `OSError` the
way an offline machine would, and each attempt is appended to `attempts` with the
stack that made it. Loopback (127.0.0.0/8, ::1, `localhost`) and Unix sockets pass: the
policy's test server and llama.cpp child live there. Every HTTP client in the stack
(urllib, httpx/httpx2, aiohttp, requests) ends in these calls, so nothing escapes by
choosing another library; only child processes are outside, and the paths tested here
start none.

Used in-process by `tests/policy/conftest.py` and, through `python -c`, in a fresh
interpreter (`test_offline.py`), where imports happen under the guard too.
"""

from __future__ import annotations

import ipaddress
import socket
import traceback
from dataclasses import dataclass
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                            "ip6-loopback"})


@dataclass(frozen=True)
class Attempt:
    call: str
    target: str
    stack: str

    def __str__(self) -> str:
        return f"{self.call}({self.target}) from\n{self.stack}"


attempts: list[Attempt] = []
_saved: dict[str, Any] = {}


def is_loopback(host: Any) -> bool:
    if host is None:           # getaddrinfo(None, port): a local bind address
        return True
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    host = str(host).strip("[]").split("%", 1)[0].lower()
    if host in LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address_ok(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path or abstract name
        return True
    if isinstance(address, tuple) and address:
        return is_loopback(address[0])
    return False


def _refuse(call: str, target: Any) -> OSError:
    stack = "".join(traceback.format_stack(limit=25)[:-2])
    attempts.append(Attempt(call, repr(target), stack))
    return OSError(101, f"network is unreachable (refused by the test's offline guard: "
                        f"{call} {target!r})")


def install() -> None:
    """Idempotent; `uninstall()` restores the originals."""
    if _saved:
        return
    _saved.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                  sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo,
                  gethostbyname=socket.gethostbyname,
                  gethostbyname_ex=socket.gethostbyname_ex)

    def connect(self: socket.socket, address: Any) -> None:
        if not _address_ok(address):
            raise _refuse("connect", address)
        return _saved["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _address_ok(address):
            _refuse("connect_ex", address)
            return 101  # ENETUNREACH, as connect_ex reports errors
        return _saved["connect_ex"](self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if not _address_ok(address):
            raise _refuse("sendto", address)
        return _saved["sendto"](self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            _refuse("getaddrinfo", host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline)")
        return _saved["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not is_loopback(host):
            _refuse("gethostbyname", host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline)")
        return _saved["gethostbyname"](host)

    def gethostbyname_ex(host: str) -> Any:
        if not is_loopback(host):
            _refuse("gethostbyname_ex", host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline)")
        return _saved["gethostbyname_ex"](host)

    socket.socket.connect = connect            # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex      # type: ignore[method-assign]
    socket.socket.sendto = sendto              # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex


def uninstall() -> None:
    if not _saved:
        return
    socket.socket.connect = _saved["connect"]          # type: ignore[method-assign]
    socket.socket.connect_ex = _saved["connect_ex"]    # type: ignore[method-assign]
    socket.socket.sendto = _saved["sendto"]            # type: ignore[method-assign]
    socket.getaddrinfo = _saved["getaddrinfo"]
    socket.gethostbyname = _saved["gethostbyname"]
    socket.gethostbyname_ex = _saved["gethostbyname_ex"]
    _saved.clear()

"""HTTP with credentials: where SAIR sends them, and that it sends them nowhere else.

SAIR talks HTTP with the standard library to the Ray dashboard (with the cluster's Ray
token when token authentication is on), to Prometheus and to the policy LLM's endpoint
(with `policy.api_key_env`'s key). Two rules hold for every such request:

- **Credentials only over HTTPS or to this machine.** `check_credentials_url` refuses
  to send them in clear text to another host: the URL must be `https://`, or `http://`
  to a loopback address, `localhost` or an address of this machine's own interfaces
  (traffic that never leaves it). `SAIR_ALLOW_PLAIN_HTTP=1` allows plain HTTP anyway
  (a private network you trust); it is read at each check.
- **Credentials never follow a redirect elsewhere.** `urlopen` follows redirects within
  the same scheme, host and port with every header, and drops `Authorization`, `Cookie`
  and `X-Api-Key` from a redirect anywhere else (the standard library forwards them).
  It speaks only `http://` and `https://` (no `file://`, `ftp://` or `data:`).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

ALLOW_PLAIN_HTTP_ENV = "SAIR_ALLOW_PLAIN_HTTP"
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "x-api-key"})


class InsecureURL(ValueError):
    """Credentials would go to `url` in clear text; the message says what to do."""


def plain_http_allowed() -> bool:
    return os.environ.get(ALLOW_PLAIN_HTTP_ENV, "").strip().lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=256)
def _is_own_address(ip: str) -> bool:
    """Whether `ip` is an address of one of this machine's interfaces (a socket can be
    bound to it): traffic to it goes through the loopback device."""
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        return True
    if addr.is_unspecified or addr.is_multicast:
        return False
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def is_local_host(host: str) -> bool:
    """Whether every address `host` names is this machine's own (loopback included)."""
    host = host.strip("[]").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
        return _is_own_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    ips = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(ips) and all(_is_own_address(ip) for ip in ips)


def check_credentials_url(url: str, what: str) -> None:
    """Raise `InsecureURL` unless credentials may be sent to `url` (module docstring).
    `what` names the credential in the message."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme != "http":
        raise InsecureURL(f"not sending {what} to {url}: only http:// and https:// URLs")
    if is_local_host(parts.hostname or "") or plain_http_allowed():
        return
    raise InsecureURL(
        f"not sending {what} in clear text to {parts.hostname} ({url}): use an https:// "
        f"URL or this machine's own address, or set {ALLOW_PLAIN_HTTP_ENV}=1 to allow "
        "plain HTTP on a network you trust")


def has_credentials(headers: Mapping[str, str]) -> bool:
    return any(k.lower() in CREDENTIAL_HEADERS for k in headers)


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urllib.parse.urlsplit(url)
    scheme = p.scheme.lower()
    return scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(scheme)


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for key in list(new.headers):
                if key.lower() in CREDENTIAL_HEADERS:
                    del new.headers[key]
        return new


@functools.lru_cache(maxsize=1)
def _opener() -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _SameOriginCredentials(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def urlopen(req: urllib.request.Request | str, timeout: float) -> Any:
    """`urllib.request.urlopen`, following the two rules of the module docstring: a
    request carrying credentials is checked with `check_credentials_url` first."""
    if isinstance(req, str):
        req = urllib.request.Request(req)
    if req.type not in ("http", "https"):
        raise InsecureURL(f"{req.full_url}: only http:// and https:// URLs")
    if has_credentials(dict(req.header_items())):
        check_credentials_url(req.full_url, "credentials")
    return _opener().open(req, timeout=timeout)

"""A cluster-wide lock in Ray's internal KV, for writes that must not interleave across
processes: every SAIR controller of a cluster (one per app, each its own actor) rewrites
Serve's whole declarative config to change one app's CPU/memory
(`backends/ray_serve.py`), and two such writes interleaved would undo each other.

The GCS key-value store has no compare-and-swap, but `_internal_kv_put(overwrite=False)`
is test-and-set: it writes only if the key is absent and says whether it was there. The
holder writes its name and a deadline; a lock past its deadline (its holder died holding
it) is removed and taken over. Two processes that find the same stale lock at the same
instant could both take it over; the TTL (far longer than one config write) keeps that to
holders that died mid-write.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

NAMESPACE = "sair"


class LockTimeout(TimeoutError):
    """The lock stayed held by someone else for longer than the caller waits."""


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


@contextlib.contextmanager
def cluster_lock(name: str, owner: str, *, ttl_s: float = 120.0, wait_s: float = 60.0,
                 poll_s: float = 0.2, kv: Any = None,
                 clock: Callable[[], float] = time.time) -> Iterator[None]:
    """Hold lock `name` for the block. Waits up to `wait_s` for another holder (else
    `LockTimeout`, naming it); a holder that kept it past `ttl_s` is presumed dead."""
    kv = kv or _kv()
    key = f"lock:{name}".encode()
    deadline = clock() + wait_s
    while True:
        mine = json.dumps({"owner": owner, "until": clock() + ttl_s}).encode()
        if not kv._internal_kv_put(key, mine, overwrite=False, namespace=NAMESPACE):
            break
        raw = kv._internal_kv_get(key, namespace=NAMESPACE)
        held = _parse(raw)
        if raw is not None and held.get("until", 0.0) < clock():
            kv._internal_kv_del(key, namespace=NAMESPACE)   # its holder died holding it
            continue
        if clock() >= deadline:
            raise LockTimeout(f"lock {name!r} is held by {held.get('owner', '?')} (waited "
                              f"{wait_s:g} s)")
        time.sleep(poll_s)
    try:
        yield
    finally:
        # release only our own lock (a stale-lock takeover may have replaced it)
        if kv._internal_kv_get(key, namespace=NAMESPACE) == mine:
            kv._internal_kv_del(key, namespace=NAMESPACE)


def _parse(raw: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}

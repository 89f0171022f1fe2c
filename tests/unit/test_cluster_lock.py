"""sair_ray.cluster_lock on Ray's real internal KV (a private local Ray), plus the
stale-holder rule with a controllable clock."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sair_ray.cluster_lock import LockTimeout, cluster_lock
from tests.ray_harness import private_ray

pytest.importorskip("ray")


def test_one_holder_at_a_time_timeouts_name_the_holder_and_dead_holders_expire() -> None:
    from ray.experimental import internal_kv

    with private_ray(1):
        inside, overlaps = [0], []

        def worker(i: int) -> None:
            for _ in range(5):
                with cluster_lock("t", f"w{i}", poll_s=0.01):
                    inside[0] += 1
                    overlaps.append(inside[0])
                    time.sleep(0.005)
                    inside[0] -= 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert overlaps and max(overlaps) == 1
        with cluster_lock("held", "alice"), pytest.raises(LockTimeout, match="alice"):
            with cluster_lock("held", "bob", wait_s=0.3, poll_s=0.05):
                pass
        # a holder that died holding the lock: taken over once its TTL is past
        now = [1000.0]
        internal_kv._internal_kv_put(b"lock:dead", json.dumps(
            {"owner": "ghost", "until": 1010.0}).encode(), namespace="sair")
        with pytest.raises(LockTimeout, match="ghost"):
            with cluster_lock("dead", "heir", wait_s=0, clock=lambda: now[0]):
                pass
        now[0] += 11
        with cluster_lock("dead", "heir", ttl_s=10, wait_s=1, clock=lambda: now[0]):
            assert b"heir" in internal_kv._internal_kv_get(b"lock:dead", namespace="sair")
        assert not internal_kv._internal_kv_exists(b"lock:dead", namespace="sair")

"""GPU rate control of a GPU stage's replicas, on whichever node each one runs.

Each GPU replica loads the cuda_tb shim (`cuda_tb.runtime_env`), which serves a Unix
socket on the replica's own node (`CUDA_TB_SOCKET`, one per process: `%p` is the pid). A
controller on the head node cannot open a socket on another node, so every request goes
through a relay on the replica's node: a small Ray actor (`sair-shim-relay:<node id>`,
namespace `sair`, no CPU reserved, pinned to that node, shared by every app's controller)
that runs `shim_requests` there. Replicas on the controller's own node are served in
process.

A shim socket is named by a pid, and pids are reused: before talking to one, the relay
checks that the process with that pid is the Serve replica asked for (its command line,
which Ray sets to `ray::ServeReplica:<app>:<deployment>...`) and, after connecting, that
the shim answering is that process's (`GET stats` reports its pid). Anything else is an
error for that replica, never a rate set on an unrelated process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NAMESPACE = "sair"
RELAY_PREFIX = "sair-shim-relay:"


@dataclass(frozen=True)
class ReplicaShim:
    """One running replica of a GPU deployment and its shim socket."""

    replica: str          # Serve's replica id
    pid: int
    node_id: str          # Ray node id ("" when the details do not say)
    socket: str           # the socket path on that node

    @classmethod
    def of(cls, replicas: Sequence[Mapping[str, Any]], template: str) -> list[ReplicaShim]:
        """The RUNNING replicas of a deployment (Serve REST API details) with a pid."""
        return [cls(str(r.get("replica_id") or r.get("actor_name") or r["pid"]), int(r["pid"]),
                    str(r.get("node_id") or ""),
                    template.replace("%p", str(int(r["pid"]))).replace("%%", "%"))
                for r in replicas if r.get("state") == "RUNNING" and r.get("pid")]


def replica_marker(app: str, deployment: str) -> str:
    """What the command line of a replica of `app`/`deployment` contains (Ray names the
    replica actor class `ServeReplica:<app>:<deployment>`)."""
    return f"ServeReplica:{app}:{deployment}"


def shim_requests(requests: Sequence[Mapping[str, Any]], timeout_s: float = 1.0
                  ) -> list[dict[str, Any]]:
    """Run `requests` against shims on this node: each {"socket", "pid", "marker", "op":
    "get" | "set", "rate"} -> {"rate": r} or {"error": why}."""
    from cuda_tb import ShimClient, ShimError

    out: list[dict[str, Any]] = []
    for req in requests:
        pid, path = int(req["pid"]), str(req["socket"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            out.append({"error": f"pid {pid}: no such process on this node"})
            continue
        if req["marker"] not in cmdline:
            out.append({"error": f"pid {pid} is not a replica of {req['marker']} (pid reused?"
                                 f" its command line: {cmdline[:80]!r}); not touching it"})
            continue
        try:
            client = ShimClient(path, timeout=timeout_s)
            owner = int(client.stats()["pid"])
            if owner != pid:
                out.append({"error": f"{path} is served by pid {owner}, not {pid}"})
                continue
            if req["op"] == "set":
                client.set_rate(float(req["rate"]))
            out.append({"rate": client.get_rate()})
        except (ShimError, OSError, ValueError, KeyError) as e:
            out.append({"error": f"{path}: {e}"})
    return out


class ShimRelay:
    """The relay actor's class (see the module docstring)."""

    def run(self, requests: list[dict[str, Any]], timeout_s: float = 1.0
            ) -> list[dict[str, Any]]:
        return shim_requests(requests, timeout_s)

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


def _ray_node() -> str | None:
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())


def _relay(node_id: str) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(ShimRelay).options(
        name=RELAY_PREFIX + node_id, namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=0, max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()


class GpuRates:
    """Reads and sets the rate of every replica of a GPU stage (see the module docstring).
    `local_node` says which node this process is on (None: no Ray, everything local);
    `relay` returns the relay actor of a node (tests may replace both)."""

    def __init__(self, app: str, *, timeout_s: float = 5.0,
                 local_node: Callable[[], str | None] = _ray_node,
                 relay: Callable[[str], Any] = _relay) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self._local_node = local_node
        self._relay = relay
        self.relayed = 0          # requests that went through a relay (for tests and stats)

    def get(self, deployment: str, shims: Sequence[ReplicaShim]) -> dict[str, float | str]:
        """replica -> its rate, or the error (a string) that kept it from being read."""
        return self._call(deployment, shims, {"op": "get"})

    def set(self, deployment: str, shims: Sequence[ReplicaShim], rate: float
            ) -> dict[str, float | str]:
        """Set `rate` on every replica; replica -> the rate it reports after, or the error."""
        return self._call(deployment, shims, {"op": "set", "rate": float(rate)})

    def _call(self, deployment: str, shims: Sequence[ReplicaShim],
              op: Mapping[str, Any]) -> dict[str, float | str]:
        marker = replica_marker(self.app, deployment)
        here = self._local_node()
        by_node: dict[str, list[ReplicaShim]] = {}
        for s in shims:
            by_node.setdefault(s.node_id if here is not None else "", []).append(s)
        out: dict[str, float | str] = {}
        for node, group in by_node.items():
            reqs = [{"socket": s.socket, "pid": s.pid, "marker": marker, **op} for s in group]
            try:
                if here is None or node in ("", here):
                    replies = shim_requests(reqs)
                else:
                    import ray

                    self.relayed += len(reqs)
                    replies = ray.get(self._relay(node).run.remote(reqs),
                                      timeout=self.timeout_s)
            except Exception as e:  # the relay could not be placed or answered
                replies = [{"error": f"node {node[:12]}: shim relay failed: {e}"}] * len(reqs)
            for s, r in zip(group, replies, strict=True):
                out[s.replica] = float(r["rate"]) if "rate" in r else str(r["error"])
        return out

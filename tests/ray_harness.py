"""Private Ray instances for tests.

Every test that needs Ray starts its own head node through `private_ray()`: its own temp
dir, a GCS on a free port, the dashboard (if any) on a free port, all on 127.0.0.1. The
driver connects to that address explicitly, never to "the" local instance, and nothing is
read from or written to the machine's default `/tmp/ray/ray_current_cluster`: the test
session's conftest points RAY_TMPDIR at a directory of its own (`session_tmpdir()`). On
exit, even when the test failed, Serve is shut down, the driver disconnects, the head's
processes are stopped, and any process still running from this instance's temp dir (with
its descendants) is killed by pid: nothing leaks into the next test.

A Ray that this test run did not start ("foreign", e.g. a developer's `ray start`) is
never connected to; `private_ray()` says it is there, since it competes for the CPUs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Short: Ray puts Unix sockets under the temp dir and their paths are limited to 107 bytes.
_ROOT = Path("/tmp")
_SESSION_ENV = "SAIR_TEST_RAY_TMPDIR"


class ForeignRayWarning(UserWarning):
    """A Ray instance this test run did not start is running on the machine."""


def session_tmpdir() -> Path:
    """This test session's RAY_TMPDIR (created on first use, shared with subprocesses)."""
    d = os.environ.get(_SESSION_ENV)
    if not d:
        d = tempfile.mkdtemp(prefix="sair-t-", dir=_ROOT)
        os.environ[_SESSION_ENV] = d
    # Ray writes its bootstrap-address file in RAY_TMPDIR/ray: it must exist.
    (Path(d) / "ray").mkdir(parents=True, exist_ok=True)
    return Path(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes() -> list[tuple[int, str]]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if "gcs_server" in cmd or "raylet" in cmd:
                out.append((p.info["pid"], cmd))
    return out


def foreign_ray(ours: Path | None = None) -> list[str]:
    """Ray head/worker nodes running on this machine that were not started under `ours`
    (default: this test session's temp dir): one line each, for a message."""
    ours = ours or session_tmpdir()
    return [f"pid {pid}: {cmd[:160]}" for pid, cmd in _ray_processes() if str(ours) not in cmd]


def kill_tree(marker: str, grace_s: float = 5.0) -> list[int]:
    """Kill every process whose command line contains `marker` (a private temp dir), and
    their descendants; returns the pids that were still alive."""
    import psutil

    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
                roots.append(p)
    procs = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.Error):
            procs.update({c.pid: c for c in p.children(recursive=True)})
    procs.pop(os.getpid(), None)
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return sorted(procs)


@dataclass(frozen=True)
class PrivateRay:
    address: str              # the GCS address the driver connected to
    temp_dir: Path            # this instance's own temp dir
    dashboard: str | None     # host:port of its dashboard, if started
    cluster: object           # ray.cluster_utils.Cluster (head processes owned by this test)


@contextlib.contextmanager
def private_ray(num_cpus: int = 4, *, dashboard: bool = False, connect: bool = True,
                object_store_mb: int = 200, **head_args: object) -> Iterator[PrivateRay]:
    """A Ray head node owned by this test (see the module docstring). `connect=False`
    leaves the driver unconnected (a test that connects and disconnects itself).
    `head_args` go to the head node (e.g. `resources`)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("private_ray: this process is already connected to a Ray "
                           f"instance ({ray.get_runtime_context().gcs_address}); a test must "
                           "leave none behind")
    session = session_tmpdir()
    others = foreign_ray(session)
    if others:
        warnings.warn(ForeignRayWarning(
            "a Ray instance this test run did not start is running; the tests never "
            "connect to it, but it competes for the CPUs (stop it with `ray stop`):\n  "
            + "\n  ".join(others)), stacklevel=3)
    tmp = Path(tempfile.mkdtemp(prefix="r-", dir=session))
    dash_port = free_port() if dashboard else None
    args: dict[str, object] = {
        "num_cpus": num_cpus, "temp_dir": str(tmp), "include_dashboard": dashboard,
        "object_store_memory": object_store_mb * 1024 * 1024, **head_args}
    if dashboard:
        args.update(dashboard_port=dash_port, dashboard_host="127.0.0.1")
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=args)
        if connect:
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield PrivateRay(cluster.address, tmp,
                         f"127.0.0.1:{dash_port}" if dashboard else None, cluster)
    finally:
        _stop(cluster, tmp)


def _stop(cluster: object | None, tmp: Path) -> None:
    from sair_ray.emulate import shutdown_ray

    shutdown_ray(cluster)
    # Whatever survived (a worker the raylet did not reap, a stuck dashboard module).
    kill_tree(str(tmp))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            shutil.rmtree(tmp)
            break
        except FileNotFoundError:
            break
        except OSError:  # a dying process still writing its log
            time.sleep(0.5)

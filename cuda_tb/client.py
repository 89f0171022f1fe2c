"""Client for the cuda_tb shim's per-process control socket.

The shim listens on ``CUDA_TB_SOCKET`` (``%p`` replaced by the pid) and speaks a
line protocol: ``SET rate 0.5`` -> ``OK``, ``GET stats`` -> one JSON line, errors
-> ``ERR <reason>``. Each call here opens a fresh connection, so a client object is
cheap, holds no descriptor and is safe to share between threads.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

SOCKET_PREFIX = "cuda_tb-"
SOCKET_SUFFIX = ".sock"
MIN_RATE = 0.1
MAX_RATE = 1.0
_SOCKET_RE = re.compile(rf"^{re.escape(SOCKET_PREFIX)}(\d+){re.escape(SOCKET_SUFFIX)}$")


class ShimError(Exception):
    """Base class for errors talking to the shim."""


class ShimConnectionError(ShimError, ConnectionError):
    """No shim listens at the socket path."""


class ShimTimeoutError(ShimError, TimeoutError):
    """The shim did not answer in time."""


class ShimCommandError(ShimError):
    """The shim rejected a command (it answered ``ERR ...``)."""


class ShimClient:
    """Talks to one process's shim through its Unix socket."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.path = Path(path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ShimClient({str(self.path)!r})"

    @classmethod
    def for_pid(cls, socket_dir: str | os.PathLike[str], pid: int, timeout: float = 2.0
                ) -> ShimClient:
        """Client for the process ``pid`` started with :func:`cuda_tb.runtime_env`."""
        return cls(socket_path(socket_dir, pid), timeout=timeout)

    # -- protocol ----------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one command line and return the reply without its newline.

        Raises :class:`ShimCommandError` for an ``ERR`` reply.
        """
        if "\n" in line or "\r" in line:
            raise ValueError("a command is a single line")
        reply = self._roundtrip(line.encode("ascii") + b"\n")
        if reply.startswith("ERR"):
            raise ShimCommandError(f"{self.path}: {line!r} rejected: {reply[3:].strip()}")
        return reply

    def _roundtrip(self, payload: bytes) -> str:
        self._check_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except FileNotFoundError as exc:
                raise ShimConnectionError(self._missing_message()) from exc
            except ConnectionRefusedError as exc:
                raise ShimConnectionError(
                    f"nothing listens on {self.path}: the process that created it has exited "
                    "(a stale socket file)"
                ) from exc
            except PermissionError as exc:
                raise ShimConnectionError(
                    f"permission denied on {self.path}: the socket is private (mode 0600) to "
                    "the user running the GPU process"
                ) from exc
            sock.sendall(payload)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ShimConnectionError(f"{self.path}: connection closed before a reply")
                buf += chunk
                if len(buf) > 1 << 20:
                    raise ShimError(f"{self.path}: reply too long")
        except TimeoutError as exc:
            raise ShimTimeoutError(
                f"{self.path}: no reply within {self.timeout:g} s"
            ) from exc
        finally:
            sock.close()
        return buf.decode("utf-8", errors="replace").rstrip("\n")

    def _check_path(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise ShimConnectionError(self._missing_message()) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ShimConnectionError(f"{self.path} exists but is not a Unix socket")

    def _missing_message(self) -> str:
        return (
            f"no cuda_tb control socket at {self.path}: the process is not running, was not "
            "started with LD_PRELOAD=libcuda_tb.so and CUDA_TB_SOCKET, or has not initialised "
            "CUDA yet (the socket appears on its first CUDA driver call)"
        )

    # -- commands ------------------------------------------------------------------

    def ping(self) -> None:
        self.command("PING")

    def set_rate(self, rate: float) -> None:
        """Set the GPU rate ratio r; it is in force when this returns (the shim starts
        a new 10 ms window at the new rate before it replies)."""
        rate = float(rate)
        if not math.isfinite(rate) or not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"rate must be in [{MIN_RATE}, {MAX_RATE}], got {rate}")
        self.command(f"SET rate {rate!r}")

    def get_rate(self) -> float:
        return float(json.loads(self.command("GET rate"))["rate"])

    def set_blocks_per_window(self, blocks: int) -> None:
        """Replace the calibrated bucket capacity B_W (thread blocks per window)."""
        if int(blocks) != blocks or blocks < 1:
            raise ValueError(f"blocks_per_window must be a positive integer, got {blocks}")
        self.command(f"SET blocks_per_window {int(blocks)}")

    def set_graph_tokens(self, tokens: int) -> None:
        """Cost of a CUDA graph launch whose size is unknown (0 = one window, B_W)."""
        if int(tokens) != tokens or tokens < 0:
            raise ValueError(f"graph_tokens must be a non-negative integer, got {tokens}")
        self.command(f"SET graph_tokens {int(tokens)}")

    def stats(self) -> dict[str, Any]:
        """Counters and settings of the shim, see docs/shim.md for the fields."""
        reply = self.command("GET stats")
        try:
            data = json.loads(reply)
        except json.JSONDecodeError as exc:
            raise ShimError(f"{self.path}: malformed stats reply: {reply[:200]!r}") from exc
        if not isinstance(data, dict):
            raise ShimError(f"{self.path}: stats reply is not an object")
        return data


def socket_path(socket_dir: str | os.PathLike[str], pid: int) -> Path:
    """Socket path of process ``pid`` under the naming used by :func:`runtime_env`."""
    return Path(socket_dir) / f"{SOCKET_PREFIX}{int(pid)}{SOCKET_SUFFIX}"


def find_sockets(socket_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """Map pid -> socket path for every shim socket in ``socket_dir``.

    Sockets of processes that no longer exist are skipped (and left in place).
    """
    found: dict[int, Path] = {}
    directory = Path(socket_dir)
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        m = _SOCKET_RE.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass  # alive, owned by someone else
        found[pid] = entry
    return found


def utilization(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Estimated GPU busy fraction between two ``stats()`` snapshots of one process."""
    active = after["gpu_active_ns"] - before["gpu_active_ns"]
    elapsed = after["uptime_ns"] - before["uptime_ns"]
    if elapsed <= 0:
        raise ValueError("snapshots are not in time order (or come from different processes)")
    return max(0.0, min(1.0, active / elapsed))

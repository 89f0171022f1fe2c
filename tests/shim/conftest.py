"""Fixtures for the cuda_tb shim tests: the shim, a fake libcuda and a launcher.

Everything is compiled here (session scope) with the system C compiler, so a fresh
clone needs no build step before ``make test``. The fake driver models an asynchronous
device in virtual time that spends 1 us per thread block behind a 2 ms launch queue, so
it retires NOMINAL_BLOCKS_PER_S blocks per second, B_W = 10 000 blocks per 10 ms window;
the tests give the shim exactly that B_W, and measured throughput is compared against
the nominal rate r * B_W.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NS_PER_BLOCK = 1000
NOMINAL_BLOCKS_PER_S = 1e9 / NS_PER_BLOCK
BLOCKS_PER_WINDOW = 10_000  # = NOMINAL_BLOCKS_PER_S * 10 ms


@dataclass(frozen=True)
class Tools:
    shim: Path
    fake: Path
    launcher: Path

    def env(self, *, preload: bool = True, **extra: Any) -> dict[str, str]:
        """Environment for the launcher: fake driver on the loader path, shim preloaded."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_TB_", "FAKE_CUDA_"))}
        env.pop("LD_PRELOAD", None)
        env["LD_LIBRARY_PATH"] = str(self.fake.parent)
        env["FAKE_CUDA_NS_PER_BLOCK"] = str(NS_PER_BLOCK)
        if preload:
            env["LD_PRELOAD"] = str(self.shim)
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def run(self, *args: str, timeout: float = 30, **env: Any) -> dict[str, Any]:
        """Run the launcher to completion and return its (last) JSON line."""
        return self.run_all(*args, timeout=timeout, **env)[-1]

    def run_all(self, *args: str, timeout: float = 30, **env: Any) -> list[dict[str, Any]]:
        proc = self.run_raw(*args, timeout=timeout, **env)
        assert proc.returncode == 0, f"launcher failed ({proc.returncode}): {proc.stderr}"
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert lines, f"launcher printed nothing; stderr: {proc.stderr}"
        return lines

    def run_raw(self, *args: str, timeout: float = 30,
                **env: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.launcher), *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, **env: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.launcher), *args],
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


# Per-process sockets (the pid makes them unique); the shim removes them at exit. The
# directory is private (mkdtemp: 0700): the shim opens no socket in a shared one like /tmp.
TEST_SOCKET_DIR = Path(tempfile.mkdtemp(prefix="tbt-", dir="/tmp"))
atexit.register(shutil.rmtree, TEST_SOCKET_DIR, ignore_errors=True)
TEST_SOCKET = f"{TEST_SOCKET_DIR}/cuda_tb-test-%p.sock"


def throttled_env(rate: float, **extra: Any) -> dict[str, Any]:
    """Launcher environment for rate r with the fake device's B_W and a socket."""
    return {
        "CUDA_TB_RATE": rate,
        "CUDA_TB_BLOCKS_PER_WINDOW": BLOCKS_PER_WINDOW,
        "CUDA_TB_SOCKET": TEST_SOCKET,
        **extra,
    }


def wait_for_socket(path: Path, proc: subprocess.Popen[str] | None = None,
                    timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited before creating {path}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    if not sys.platform.startswith("linux"):
        pytest.skip("the cuda_tb shim is Linux-only")
    from cuda_tb.build import build_fake_libcuda, build_launcher, build_shim

    tool_dir = tmp_path_factory.mktemp("cuda_tb_tools")
    return Tools(
        shim=build_shim(),
        fake=build_fake_libcuda(tool_dir, werror=True),
        launcher=build_launcher(tool_dir, werror=True),
    )


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp paths can exceed the 107-byte limit of a Unix socket path.
    d = Path(tempfile.mkdtemp(prefix="tbs-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)

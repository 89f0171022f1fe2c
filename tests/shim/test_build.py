"""Building the shim, and what it exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cuda_tb.build import build_shim, main
from tests.shim.conftest import TEST_SOCKET, Tools

pytestmark = pytest.mark.integration

HOOKED = [
    "dlsym",
    "cuInit",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuLaunchKernel",
    "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel_ptsz",
    "cuGraphLaunch",
    "cuGraphLaunch_ptsz",
    "cuGraphInstantiate",
    "cuGraphInstantiate_v2",
    "cuGraphInstantiateWithFlags",
    "cuGraphInstantiateWithParams",
    "cuGraphInstantiateWithParams_ptsz",
    "cuGraphExecDestroy",
]


def test_build_is_warning_free_and_cached(tmp_path: Path) -> None:
    so = build_shim(tmp_path, werror=True)
    assert so.name == "libcuda_tb.so" and so.is_file()
    mtime = so.stat().st_mtime_ns
    assert build_shim(tmp_path, werror=True) == so
    assert so.stat().st_mtime_ns == mtime, "an up-to-date build was redone"
    assert build_shim(tmp_path, werror=True, force=True) == so
    assert so.stat().st_mtime_ns != mtime


def test_default_build_location_is_content_addressed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_TB_BUILD_DIR", str(tmp_path))
    so = build_shim()
    assert so.parent.parent == tmp_path
    assert len(so.parent.name) == 16
    assert build_shim() == so


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--test-tools"]) == 0
    out = capsys.readouterr().out.split()
    assert [Path(p).name for p in out] == ["libcuda_tb.so", "libcuda.so.1", "tb_launcher"]


def test_exports_only_the_hooks(tools: Tools) -> None:
    # Loaded RTLD_LOCAL into a fresh interpreter, the shim's dlsym interposes on
    # nothing; ctypes then sees exactly what it exports.
    code = (
        "import ctypes, json, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "names = json.loads(sys.argv[2])\n"
        "print(json.dumps({n: hasattr(lib, n) for n in names}))\n"
    )
    import json

    internal = ["tb_admit_slow", "tb_ensure_real", "tb_dlsym_lookup", "g_tb", "tb_log"]
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tools.shim), json.dumps(HOOKED + internal)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert [n for n in HOOKED if not seen[n]] == []
    assert [n for n in internal if seen[n]] == []


def test_python_host_runs_normally_under_the_shim(tools: Tools) -> None:
    # Every dlsym() of the interpreter (extension modules, ctypes) goes through the
    # shim's interposer once it is preloaded.
    code = (
        "import ctypes, json, sqlite3, ssl, decimal, numpy\n"
        "libc = ctypes.CDLL(None)\n"
        "assert libc.getpid() > 0\n"
        "print(json.dumps({'ok': float(numpy.arange(4).sum())}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=tools.env(CUDA_TB_SOCKET=TEST_SOCKET),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"ok": 6.0}'
    assert proc.stderr == ""

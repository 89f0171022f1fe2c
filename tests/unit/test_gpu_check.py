"""scripts/gpu_check.sh (run on a GPU host) parses, and on a machine without an NVIDIA
driver stops at once with a reason instead of installing anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_without_a_gpu_it_stops_with_a_reason(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin", "OUT_DIR": str(tmp_path / "out")}
    if any((Path(d) / "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        return  # a GPU host: the script is meant to run there, not here
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "no nvidia-smi" in r.stderr

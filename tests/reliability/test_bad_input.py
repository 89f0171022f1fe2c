"""Bad input: one clear error each, a non-zero exit, nothing half-applied.

The CLI cases run the real `sair` console script in subprocesses (see bad_inputs.py);
the shim cases call the real client on real paths (a missing one, a regular file, a
socket nobody listens on).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from cuda_tb.client import ShimClient, ShimConnectionError
from sair_ray.config import MemoryConfig
from sair_ray.memory import ExperienceMemory
from sair_ray.types import Experience
from tests.reliability import bad_inputs
from tests.reliability.bad_inputs import CASES, ROOT, Result

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    # Subprocesses in parallel: ~20 of them, each mostly interpreter start-up.
    return bad_inputs.run_all(tmp_path_factory.mktemp("bad-input"), workers=3)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: bad_inputs.Case, results: dict[str, Result]) -> None:
    r = results[case.id]
    assert r.code == case.code, r.message
    assert r.message.startswith("error: "), r.message
    assert "Traceback" not in r.message
    for text in case.expect:
        assert text in r.message, f"{text!r} not in {r.message!r}"
    # One message, not a cascade: a single `error:` line.
    assert r.message.count("error:") == 1
    # Nothing half-applied: no input file changed, no output written.
    assert r.after == r.before, "files changed by a refused command"
    assert r.stdout.strip() == ""


def test_corrupt_memory_is_quarantined_and_a_fresh_one_starts(tmp_path: Path) -> None:
    bad_inputs._memory("segment")(tmp_path)
    sair = bad_inputs.sair_command()
    env = {**os.environ, "COLUMNS": "1000"}
    refused = subprocess.run(sair + ["memory", "stats", "mem"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "sair memory quarantine mem" in refused.stderr
    moved = subprocess.run(sair + ["memory", "quarantine", "mem"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert moved.returncode == 0, moved.stderr
    m = re.search(r"moved mem -> (mem\.quarantined-\d{8}T\d{6})", moved.stdout)
    assert m, moved.stdout
    aside = tmp_path / m.group(1)
    assert not (tmp_path / "mem").exists()
    # The corrupt data is kept for inspection, byte for byte.
    assert (aside / "segments" / "seg-00000001.parquet").stat().st_size == 40
    # A fresh memory at the same path works and survives a reopen.
    with ExperienceMemory(tmp_path / "mem", 6, MemoryConfig(fsync=False)) as mem:
        assert len(mem) == 0
        mem.add(Experience(id="new", time=0.0, app="a", phi=[0.0] * 6, context={}, action={},
                           reward=1.0, latency_ms=1.0, cost_rate=1.0))
    ok = subprocess.run(sair + ["memory", "stats", "mem"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and '"experiences": 1' in ok.stdout


def _shim_error(path: Path) -> str:
    with pytest.raises(ShimConnectionError) as e:
        ShimClient(path, timeout=1.0).set_rate(0.5)
    return str(e.value)


def test_wrong_shim_socket_paths_are_named_with_the_likely_cause(tmp_path: Path) -> None:
    missing = _shim_error(tmp_path / "cuda_tb-1.sock")
    assert "no cuda_tb control socket at" in missing and "LD_PRELOAD" in missing
    regular = tmp_path / "regular.sock"
    regular.write_text("")
    assert _shim_error(regular) == f"{regular} exists but is not a Unix socket"
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:   # bound, never listening: a stale socket file
        s.bind(str(stale))
        assert "nothing listens on" in _shim_error(stale)
    assert "not a Unix socket" in _shim_error(tmp_path)   # a directory given as the socket


def test_docs_table_shows_the_observed_messages(results: dict[str, Result]) -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    table = bad_inputs.render(results)
    assert table in doc, ("docs/reliability.md is out of date; regenerate the table with "
                          "`.venv/bin/python -m tests.reliability.bad_inputs`")

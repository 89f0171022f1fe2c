"""The private-Ray harness every live test uses (tests/ray_harness.py): a test's Ray never
touches the machine's default Ray files, is found by nobody else, and is gone after the
test even when the test failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ray_harness import _ray_processes, foreign_ray, private_ray, session_tmpdir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEFAULT_BOOTSTRAP = Path("/tmp/ray/ray_current_cluster")


def _mine(tmp: Path) -> list[int]:
    return [pid for pid, cmd in _ray_processes() if str(tmp) in cmd]


def test_a_failing_test_leaves_no_ray_behind() -> None:
    ray = pytest.importorskip("ray")
    before = DEFAULT_BOOTSTRAP.read_text() if DEFAULT_BOOTSTRAP.exists() else None
    seen: dict = {}
    with pytest.raises(RuntimeError, match="the test failed"):
        with private_ray(1) as r:
            seen["tmp"], seen["address"] = r.temp_dir, r.address
            assert ray.get_runtime_context().gcs_address == r.address
            assert r.temp_dir.parent == session_tmpdir()
            assert _mine(r.temp_dir), "the head's processes run from its own temp dir"
            # the session's bootstrap file, not the machine's, names this instance
            assert (session_tmpdir() / "ray" / "ray_current_cluster").read_text() == r.address
            # seen from elsewhere, this instance is foreign; from this session it is not
            assert foreign_ray(Path("/nonexistent"))
            assert not [ln for ln in foreign_ray() if str(r.temp_dir) in ln]
            raise RuntimeError("the test failed")
    assert not ray.is_initialized()
    assert _mine(seen["tmp"]) == []
    assert not seen["tmp"].exists()
    after = DEFAULT_BOOTSTRAP.read_text() if DEFAULT_BOOTSTRAP.exists() else None
    assert after == before


def test_a_test_still_connected_to_ray_is_refused() -> None:
    pytest.importorskip("ray")
    with private_ray(1):
        with pytest.raises(RuntimeError, match="already connected"):
            with private_ray(1):
                pass

"""Session-wide set-up shared by every test directory.

Ray: the session gets a RAY_TMPDIR of its own (tests/ray_harness.py), so that no test
reads or writes the machine's default /tmp/ray (whose `ray_current_cluster` file decides
which instance `ray.init()` joins), RAY_ADDRESS is cleared so that nothing joins a
developer's cluster, and whatever Ray process the session started and left running is
killed at its end. Usage stats stay off: the tests never reach the network."""

from __future__ import annotations

import os
import shutil

from tests.ray_harness import foreign_ray, kill_tree, session_tmpdir


def pytest_configure(config) -> None:
    os.environ["RAY_TMPDIR"] = str(session_tmpdir())
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def pytest_report_header(config) -> list[str]:
    others = foreign_ray()
    if not others:
        return [f"ray: private temp dir {session_tmpdir()}; no other Ray running"]
    return [f"ray: private temp dir {session_tmpdir()}; {len(others)} process(es) of a Ray "
            "this run did not start are running (never connected to; they compete for "
            "the CPUs):", *(f"  {line}" for line in others)]


def pytest_unconfigure(config) -> None:
    d = session_tmpdir()
    kill_tree(str(d))
    shutil.rmtree(d, ignore_errors=True)

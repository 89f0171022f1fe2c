"""Every policy test runs offline: a connection or name look-up that would leave the
machine is refused (tests/policy/netguard.py) and fails the test that made it, with the
stack that tried. The policy's own traffic (the loopback test server, the embedded
llama.cpp server) passes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.policy import netguard


@pytest.fixture(autouse=True)
def offline() -> Iterator[list[netguard.Attempt]]:
    netguard.install()
    netguard.attempts.clear()
    try:
        yield netguard.attempts
    finally:
        netguard.uninstall()
    made = list(netguard.attempts)
    netguard.attempts.clear()
    if made:
        pytest.fail(f"{len(made)} network access(es) leaving the machine:\n\n"
                    + "\n\n".join(map(str, made)), pytrace=False)

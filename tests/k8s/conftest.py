"""Fixtures: a loopback Kubernetes API server (tests/k8s/apiserver.py) and the real
`kubernetes` client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.apiserver import ApiServer

pytest.importorskip("kubernetes", reason="the k8s extra is not installed")


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api_client(apiserver: ApiServer) -> Iterator[Any]:
    from kubernetes import client

    cfg = client.Configuration(host=apiserver.url)
    with client.ApiClient(cfg) as c:
        yield c

"""The embedded policy model is one server per Ray cluster, whatever the number of
attached apps (sair_ray/live/shared_lm.py): two controller processes (Ray actors, as two
apps' controllers are) ask for it at the same time and get the same server, a real
llama.cpp server answering the OpenAI API."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.ray_harness import private_ray

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _Controller:
    def endpoint(self) -> str:
        from sair_ray.config import PolicyConfig
        from sair_ray.live.shared_lm import shared_endpoint

        ep = shared_endpoint(PolicyConfig())
        assert ep is not None
        return ep.url


@pytest.mark.timeout(240)
def test_two_controllers_share_one_model_server() -> None:
    import ray

    from sair_ray.config import PolicyConfig
    from sair_ray.live.shared_lm import host_name, shared_endpoint
    from sair_ray.policy.lm import smollm2_path

    assert shared_endpoint(PolicyConfig()) is None   # no Ray here yet: resolved per process
    with private_ray(2):
        a, b = (ray.remote(_Controller).options(num_cpus=0).remote() for _ in range(2))
        urls = ray.get([a.endpoint.remote(), b.endpoint.remote()], timeout=200)
        assert urls[0] == urls[1]
        host = ray.get_actor(host_name(smollm2_path()), namespace="sair")
        assert ray.get(host.pid.remote()) is not None
        with urllib.request.urlopen(f"{urls[0]}/models", timeout=10) as r:
            assert json.load(r)["data"]
        # a baseline or an endpoint given in the config never starts it
        assert shared_endpoint(PolicyConfig(backend="vllm", url="http://x:8000/v1")) is None
        ray.kill(host)

"""The embedded policy model is one server per Ray cluster, whatever the number of
attached apps (sair_ray/live/shared_lm.py): two controller processes (Ray actors, as two
apps' controllers are) ask for it at the same time and get the same server, a real
llama.cpp server answering the OpenAI API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.ray_harness import private_ray

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _Controller:
    def endpoint(self) -> tuple[str, str]:
        from sair_ray.config import PolicyConfig
        from sair_ray.live.shared_lm import shared_endpoint

        ep = shared_endpoint(PolicyConfig())
        assert ep is not None
        return ep.url, ep.api_key


@pytest.mark.timeout(240)
def test_two_controllers_share_one_model_server() -> None:
    import ray

    from sair_ray.config import PolicyConfig
    from sair_ray.live.shared_lm import host_name, shared_endpoint
    from sair_ray.policy.lm import smollm2_path

    assert shared_endpoint(PolicyConfig()) is None   # no Ray here yet: resolved per process
    with private_ray(2):
        a, b = (ray.remote(_Controller).options(num_cpus=0).remote() for _ in range(2))
        eps = ray.get([a.endpoint.remote(), b.endpoint.remote()], timeout=200)
        assert eps[0] == eps[1]     # one server: the same URL and key
        url, key = eps[0]
        host = ray.get_actor(host_name(smollm2_path()), namespace="sair")
        assert ray.get(host.pid.remote()) is not None
        req = urllib.request.Request(f"{url}/models",
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["data"]
        with pytest.raises(urllib.error.HTTPError, match="401"):   # its key is required
            urllib.request.urlopen(f"{url}/models", timeout=10)
        # a baseline or an endpoint given in the config never starts it
        assert shared_endpoint(PolicyConfig(backend="vllm", url="http://x:8000/v1")) is None
        ray.kill(host)

"""SAIR: an LLM in-context-RL autoscaler for multi-stage ML inference pipelines."""

# First, before any submodule can import DSPy, LiteLLM or Ray: their own network fetches
# off (sair_ray/offline.py says which and why).
from sair_ray import offline

offline.apply()

from sair_ray.config import ConfigError, SAIRConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ConfigError", "SAIRConfig", "__version__", "attach"]


def __getattr__(name: str) -> object:
    # `sair_ray.attach` needs Ray; import it on first use so `import sair_ray` stays light.
    if name == "attach":
        from sair_ray.live import attach

        return attach
    raise AttributeError(f"module 'sair_ray' has no attribute {name!r}")

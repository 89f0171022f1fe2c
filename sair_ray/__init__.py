"""SAIR: an LLM in-context-RL autoscaler for multi-stage ML inference pipelines."""

from sair_ray.config import ConfigError, SAIRConfig

__version__ = "0.1.0"
__all__ = ["ConfigError", "SAIRConfig", "__version__", "attach"]


def __getattr__(name: str) -> object:
    # `sair_ray.attach` needs Ray; import it on first use so `import sair_ray` stays light.
    if name == "attach":
        from sair_ray.live import attach

        return attach
    raise AttributeError(f"module 'sair_ray' has no attribute {name!r}")

"""SAIR: an LLM in-context-RL autoscaler for multi-stage ML inference pipelines."""

from sair_ray.config import ConfigError, SAIRConfig

__version__ = "0.1.0"
__all__ = ["ConfigError", "SAIRConfig", "__version__"]

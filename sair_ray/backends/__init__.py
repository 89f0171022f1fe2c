"""Backends: the world the controller observes and acts on (simulator, Ray Serve, KubeRay)."""

from sair_ray.backends.base import Backend

__all__ = ["Backend"]

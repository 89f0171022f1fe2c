"""SAIR on a live Ray Serve app: the controller as a detached actor, and its handle.

`attach`, `detach`, `get_handle` run on a Ray driver; `ensure_attached` is what an
ingress deployment calls to bring SAIR up with its app. See docs/live.md.
"""

from sair_ray.live.handle import (
    AttachError,
    AttachHandle,
    attach,
    detach,
    ensure_attached,
    get_handle,
)
from sair_ray.live.loop import LiveLoop, LiveOptions
from sair_ray.registry import PolicyError

__all__ = ["AttachError", "AttachHandle", "LiveLoop", "LiveOptions", "PolicyError", "attach",
           "detach", "ensure_attached", "get_handle"]

"""cuda_tb: a token-bucket GPU rate limiter loaded into CUDA processes with LD_PRELOAD.

SAIR's GPU action is a rate ratio r in [0.1, 1]. The shim (``libcuda_tb.so``)
intercepts kernel and graph launches in the CUDA driver API and lets through
r * B_W thread blocks per 10 ms window (docs/algorithm.md §8). Each process serves a
Unix socket through which the controller sets r and reads telemetry.

Typical use from a Ray Serve deployment::

    import cuda_tb
    opts = {"num_gpus": 1, "runtime_env": cuda_tb.runtime_env("/tmp/sair-gpu")}
    ...
    cuda_tb.ShimClient.for_pid("/tmp/sair-gpu", replica_pid).set_rate(0.5)

See docs/shim.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cuda_tb.client import (
    ShimClient,
    ShimCommandError,
    ShimConnectionError,
    ShimError,
    ShimTimeoutError,
    find_sockets,
    socket_path,
    utilization,
)

__all__ = [
    "BuildError",
    "ShimClient",
    "ShimCommandError",
    "ShimConnectionError",
    "ShimError",
    "ShimTimeoutError",
    "build_fake_libcuda",
    "build_launcher",
    "build_shim",
    "find_sockets",
    "runtime_env",
    "socket_path",
    "socket_template",
    "utilization",
]

_BUILD_NAMES = frozenset({"BuildError", "build_fake_libcuda", "build_launcher", "build_shim"})


def __getattr__(name: str) -> Any:
    # cuda_tb.build is imported on first use, so that `python -m cuda_tb.build`
    # does not find it already imported by the package.
    if name in _BUILD_NAMES:
        from cuda_tb import build

        return getattr(build, name)
    raise AttributeError(f"module 'cuda_tb' has no attribute {name!r}")


# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
_MAX_PID_DIGITS = 7  # pid_max is at most 4194304 on Linux


def socket_template(socket_dir: str | os.PathLike[str]) -> str:
    """The ``CUDA_TB_SOCKET`` value for ``socket_dir``: one socket per process pid."""
    return str(Path(socket_dir) / "cuda_tb-%p.sock")


def runtime_env(
    socket_dir: str,
    *,
    rate: float | None = None,
    blocks_per_window: int | None = None,
    shim_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Ray ``runtime_env`` that loads the shim into a GPU replica.

    Returns ``{"env_vars": {"LD_PRELOAD": <libcuda_tb.so>, "CUDA_TB_SOCKET":
    "<socket_dir>/cuda_tb-%p.sock", ...}}``. The shim is built (or found in the
    build cache) on this machine; on a multi-node cluster run
    ``python -m cuda_tb.build`` on every node first so the same path exists there,
    or pass ``shim_path``. The sockets are created with mode 0600; a ``socket_dir``
    that does not exist yet is created with mode 0700. The shim opens no control socket
    in a directory another user owns or can write to (anyone who can write there could
    take the socket's place), so such a ``socket_dir`` is refused here already.
    """
    if rate is not None and not 0.1 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0.1, 1], got {rate}")
    if blocks_per_window is not None and int(blocks_per_window) < 1:
        raise ValueError(f"blocks_per_window must be >= 1, got {blocks_per_window}")
    directory = Path(socket_dir).expanduser().absolute()
    longest = len(str(directory / f"cuda_tb-{'9' * _MAX_PID_DIGITS}.sock"))
    if longest > _SUN_PATH_MAX:
        raise ValueError(
            f"socket_dir {str(directory)!r} is too long for a Unix socket path "
            f"({longest} > {_SUN_PATH_MAX} bytes); use a shorter directory such as /tmp/sair-gpu"
        )
    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    elif not directory.is_dir():
        raise ValueError(f"socket_dir {str(directory)!r} exists and is not a directory")
    else:  # what the shim checks before it opens its socket (cuda_tb/src/control.c)
        st = directory.stat()
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ValueError(
                f"socket_dir {str(directory)!r} is owned by uid {st.st_uid} with mode "
                f"{st.st_mode & 0o777:03o}: the shim opens its control socket only in a "
                "directory of this user's own that no one else can write to; use a new "
                "directory (created with mode 0700), e.g. /tmp/sair-gpu")
    if shim_path is None:
        from cuda_tb.build import build_shim

        shim_path = build_shim()
    so = Path(shim_path)
    env = {"LD_PRELOAD": str(so), "CUDA_TB_SOCKET": socket_template(directory)}
    if rate is not None:
        env["CUDA_TB_RATE"] = repr(float(rate))
    if blocks_per_window is not None:
        env["CUDA_TB_BLOCKS_PER_WINDOW"] = str(int(blocks_per_window))
    return {"env_vars": env}

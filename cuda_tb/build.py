"""Build the cuda_tb LD_PRELOAD shim and its test tools with the system C compiler.

No CUDA toolkit is needed: the shim declares the few driver types it uses itself.
Compilation goes through setuptools' compiler abstraction (the same machinery that
builds C extensions), with the flags fixed here rather than Python's own CFLAGS.

Outputs are cached by content: the default location is
``$CUDA_TB_BUILD_DIR`` or ``~/.cache/sair-ray/cuda_tb/<digest>/`` where the digest
covers the sources, the flags and the compiler, so editing a source file yields a
new build and an unchanged tree is never rebuilt. Concurrent builders (pytest
workers, Ray replicas on one node) serialise on a lock file and install the
result with an atomic rename.

CLI: ``python -m cuda_tb.build [--out DIR] [--force] [--test-tools] [--werror]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SRC_DIR = Path(__file__).resolve().parent / "src"
FAKE_DIR = SRC_DIR / "fake"

SHIM_NAME = "libcuda_tb.so"
FAKE_NAME = "libcuda.so.1"  # the name the CUDA runtime dlopen()s
LAUNCHER_NAME = "tb_launcher"

SHIM_SOURCES = ("util.c", "hooks.c", "bucket.c", "control.c")
SHIM_HEADERS = ("cuda_tb.h", "cuda_abi.h")
ABI_HEADER = "cuda_abi.h"  # also compiled into the test fakes

CFLAGS = ("-O2", "-fPIC", "-Wall", "-Wextra", "-std=gnu11", "-pthread")
# Only the driver entry points (and dlsym) are exported; everything else stays
# internal so the host process cannot interpose on the shim's own helpers.
SHIM_CFLAGS = (*CFLAGS, "-fvisibility=hidden")
# nodelete: the control thread runs shim code, so a dlclose() must never unmap it.
SHIM_LDFLAGS = ("-Wl,-z,defs", "-Wl,-z,nodelete", f"-Wl,-soname,{SHIM_NAME}")
FAKE_CFLAGS = (*CFLAGS, "-fvisibility=hidden")
# -Bsymbolic: like the real driver, the fake's cuGetProcAddress returns its own
# functions, not whatever an LD_PRELOAD library interposes under the same name.
FAKE_LDFLAGS = ("-Wl,-z,defs", "-Wl,-Bsymbolic", f"-Wl,-soname,{FAKE_NAME}")
LIBS = ("dl", "pthread")


class BuildError(RuntimeError):
    """The shim (or a test tool) could not be compiled."""


def cache_root() -> Path:
    """Directory holding content-addressed builds."""
    env = os.environ.get("CUDA_TB_BUILD_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sair-ray" / "cuda_tb"


def _cc_command() -> list[str]:
    env_cc = os.environ.get("CC")
    cc = shlex.split(env_cc) if env_cc else shlex.split(sysconfig.get_config_var("CC") or "cc")
    # sysconfig may carry flags (e.g. "gcc -pthread"); the executable is enough.
    exe = shutil.which(cc[0])
    if exe is None:
        raise BuildError(
            f"no C compiler found (looked for {cc[0]!r}); install gcc or set CC to build the "
            "cuda_tb shim"
        )
    return [exe]


def _digest(kind: str, sources: Sequence[Path], flags: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(platform.machine().encode())
    h.update(" ".join(_cc_command() + list(flags)).encode())
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compiler():
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.errors import CCompilerError, DistutilsError
    except ImportError as exc:  # pragma: no cover - setuptools is a dev dependency
        raise BuildError(
            "setuptools is needed to build the cuda_tb shim: pip install setuptools"
        ) from exc
    cc = new_compiler()
    exe = _cc_command()
    # Argument lists, not command strings: distutils takes either (it splits a string
    # itself), though setuptools annotates these keywords as str only.
    executables: dict[str, Any] = {
        "compiler": exe,
        "compiler_so": exe,
        "compiler_cxx": exe,
        "linker_so": [*exe, "-shared"],
        "linker_exe": exe,
    }
    cc.set_executables(**executables)
    return cc, (CCompilerError, DistutilsError)


def _build(
    kind: str,
    target_name: str,
    sources: Sequence[Path],
    headers: Sequence[Path],
    cflags: Sequence[str],
    ldflags: Sequence[str],
    *,
    shared: bool,
    out_dir: Path | None,
    force: bool,
    werror: bool,
) -> Path:
    missing = [str(p) for p in (*sources, *headers) if not p.is_file()]
    if missing:
        raise BuildError(f"cuda_tb sources missing: {', '.join(missing)}")
    flags = [*cflags, *(["-Werror"] if werror else [])]
    digest = _digest(kind, [*sources, *headers], [*flags, *ldflags])
    target_dir = Path(out_dir) if out_dir is not None else cache_root() / digest[:16]
    target = target_dir / target_name
    stamp = target_dir / f"{target_name}.sha256"

    def fresh() -> bool:
        return target.is_file() and stamp.is_file() and stamp.read_text().strip() == digest

    if not force and fresh():
        return target
    with _locked(target_dir):
        if not force and fresh():  # another process built it while we waited
            return target
        cc, errors = _compiler()
        with tempfile.TemporaryDirectory(prefix=f".{kind}-", dir=target_dir) as tmp:
            tmp_path = Path(tmp)
            try:
                objects = cc.compile(
                    [str(s) for s in sources],
                    output_dir=str(tmp_path / "obj"),
                    include_dirs=[str(SRC_DIR)],
                    extra_postargs=flags,
                )
                out = tmp_path / target_name
                if shared:
                    cc.link_shared_object(
                        objects,
                        str(out),
                        libraries=list(LIBS),
                        extra_postargs=[*ldflags, "-pthread"],
                    )
                else:
                    cc.link_executable(
                        objects,
                        str(out),
                        libraries=list(LIBS),
                        extra_postargs=["-pthread"],
                    )
            except errors as exc:
                raise BuildError(f"building {target_name} failed: {exc}") from exc
            os.replace(out, target)
        stamp.write_text(digest + "\n")
    return target


def build_shim(out_dir: str | os.PathLike[str] | None = None, *, force: bool = False,
               werror: bool = False) -> Path:
    """Compile ``libcuda_tb.so`` (if needed) and return its path.

    ``out_dir`` defaults to a content-addressed cache directory; with an explicit
    directory the library is rebuilt whenever the sources differ from the last build
    there. ``werror`` turns compiler warnings into errors (the tests use it).
    """
    return _build(
        "shim",
        SHIM_NAME,
        [SRC_DIR / s for s in SHIM_SOURCES],
        [SRC_DIR / h for h in SHIM_HEADERS],
        SHIM_CFLAGS,
        SHIM_LDFLAGS,
        shared=True,
        out_dir=Path(out_dir) if out_dir is not None else None,
        force=force,
        werror=werror,
    )


def build_fake_libcuda(out_dir: str | os.PathLike[str] | None = None, *, force: bool = False,
                       werror: bool = False) -> Path:
    """Compile the fake driver as ``<dir>/libcuda.so.1`` and return its path.

    Put its directory on ``LD_LIBRARY_PATH`` so that ``dlopen("libcuda.so.1")`` finds
    it, or point ``CUDA_TB_REAL_LIBCUDA`` at the file.
    """
    return _build(
        "fake",
        FAKE_NAME,
        [FAKE_DIR / "fake_libcuda.c"],
        [SRC_DIR / ABI_HEADER],
        FAKE_CFLAGS,
        FAKE_LDFLAGS,
        shared=True,
        out_dir=Path(out_dir) if out_dir is not None else None,
        force=force,
        werror=werror,
    )


def build_launcher(out_dir: str | os.PathLike[str] | None = None, *, force: bool = False,
                   werror: bool = False) -> Path:
    """Compile the ``tb_launcher`` test program and return its path."""
    return _build(
        "launcher",
        LAUNCHER_NAME,
        [FAKE_DIR / "tb_launcher.c"],
        [SRC_DIR / ABI_HEADER],
        CFLAGS,
        (),
        shared=False,
        out_dir=Path(out_dir) if out_dir is not None else None,
        force=force,
        werror=werror,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cuda_tb.build", description="Build the cuda_tb LD_PRELOAD shim."
    )
    parser.add_argument("--out", help="output directory (default: content-addressed cache)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--werror", action="store_true", help="treat warnings as errors")
    parser.add_argument(
        "--test-tools",
        action="store_true",
        help="also build the fake libcuda.so.1 and the tb_launcher test program",
    )
    args = parser.parse_args(argv)
    try:
        paths = [build_shim(args.out, force=args.force, werror=args.werror)]
        if args.test_tools:
            paths.append(build_fake_libcuda(args.out, force=args.force, werror=args.werror))
            paths.append(build_launcher(args.out, force=args.force, werror=args.werror))
    except BuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

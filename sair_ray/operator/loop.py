"""`sair operator`: watch PipelineAutoscalers, run one controller per resource.

One thread does everything, so there is no locking: it lists the PipelineAutoscalers,
then watches them from the list's resourceVersion, with the watch's server-side timeout
set to the time until the next round is due. Each event reconciles one resource (create,
rebuild on a new `metadata.generation`, drop on delete); after each event and when the
watch times out, every runner that is due ticks and its `.status` is written back. A 410
Gone (the watch fell too far behind) relists; API errors back off and retry.

Status writes go to the status subresource and do not change the generation, so the
MODIFIED events they cause are recognised and ignored.

Every resource is read against the operator's allow-lists (`OperatorTrust`,
sair_ray/operator/spec.py): a RayService in another namespace, a policy endpoint, API-key
variable or metrics address the operator did not allow is refused with the field named in
`.status.error`. Every Kubernetes call has a request timeout (`request_timeout_s`); a
round whose calls time out is a failed round (`.status.roundsFailed`, `.status.error`
naming the call), a list or status write that times out is retried like any API error.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sair_ray.backends.kubernetes import (
    DEFAULT_REQUEST_TIMEOUT_S,
    RAYSERVICE,
    KubeCustomObject,
    KubeDeployment,
    transport_error,
)
from sair_ray.operator.runner import ResourceRunner, build_runner
from sair_ray.operator.spec import GROUP, PLURAL, VERSION, AutoscalerSpec, OperatorTrust
from sair_ray.session import SteadyClock, wall_offset_of

log = logging.getLogger(__name__)

Key = tuple[str, str]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Operator:
    def __init__(self, api_client: Any, *, namespace: str | None = None,
                 data_dir: Path | None = None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 watch_timeout_s: float = 60.0, trust: OperatorTrust | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        """`api_client`: a `kubernetes.client.ApiClient`. `namespace` None watches every
        namespace (needs the ClusterRole variant of the RBAC). `trust`: what resources may
        name beyond their namespace (default: nothing). `request_timeout_s`: the limit of
        every Kubernetes call but the watch (whose limit is its own timeout + 10 s).
        `clock`: round times (default: a `SteadyClock`, so that a step of the system clock
        neither stalls nor skips rounds and cooldowns)."""
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace
        self.data_dir = data_dir
        self.clock: Callable[[], float] = clock if clock is not None else SteadyClock()
        self.sleep = sleep
        self._wall_offset = wall_offset_of(self.clock)
        self.watch_timeout_s = watch_timeout_s
        self.trust = trust if trust is not None else OperatorTrust()
        self.request_timeout_s = request_timeout_s
        self.runners: dict[Key, ResourceRunner] = {}
        self.failed: dict[Key, tuple[int, str]] = {}  # generation and why it did not start
        self.resource_version: str | None = None
        self._backoff = 1.0

    # -- reconcile ----------------------------------------------------------------------
    def handle(self, etype: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        gen = int(meta.get("generation") or 0)
        if etype == "DELETED":
            self._drop(key)
            self.failed.pop(key, None)
            log.info("%s/%s deleted; its controller stopped", *key)
            return
        running = self.runners.get(key)
        if running is not None and running.spec.generation == gen:
            return  # our own status write, or a metadata-only change
        if key in self.failed and self.failed[key][0] == gen:
            return
        self._drop(key)
        self.failed.pop(key, None)
        try:
            spec = AutoscalerSpec.from_object(obj, self.trust)
            t = self.request_timeout_s
            runner = build_runner(
                spec, now=self.clock(),
                rayservice=KubeCustomObject(self.custom, *RAYSERVICE,
                                            spec.rayservice_namespace, spec.rayservice_name,
                                            request_timeout_s=t),
                deployment_store=lambda ns, name: KubeDeployment(self.apps, ns, name,
                                                                 request_timeout_s=t),
                data_dir=self.data_dir, wall_offset=self._wall_offset)
        except Exception as e:  # a bad resource is reported on it, never fatal
            msg = f"{type(e).__name__}: {e}"
            log.error("%s/%s not started: %s", *key, msg)
            self.failed[key] = (gen, msg)
            self._write_status(key, {"observedGeneration": gen, "error": msg,
                                     "lastRoundTime": None})
            return
        self.runners[key] = runner
        log.info("%s/%s: controller started (policy %s, every %.0f s)", *key,
                 spec.policy.name, runner.interval)
        self._write_status(key, {"observedGeneration": gen, "error": "", "rounds": 0})

    def _drop(self, key: Key) -> None:
        r = self.runners.pop(key, None)
        if r is not None:
            r.close()

    def sync(self) -> None:
        """List every PipelineAutoscaler: start what is new, stop what is gone."""
        # The custom-objects API returns the decoded JSON (a dict); the client annotates
        # it as object.
        lst: dict[str, Any]
        t = self.request_timeout_s
        if self.namespace:
            lst = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _request_timeout=t))
        else:
            lst = cast(dict[str, Any], self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=t))
        seen = set()
        for obj in lst.get("items", []):
            meta = obj.get("metadata") or {}
            seen.add((meta.get("namespace") or "default", meta.get("name") or ""))
            self.handle("ADDED", obj)
        for key in list(self.runners) + list(self.failed):
            if key not in seen:
                self._drop(key)
                self.failed.pop(key, None)
        self.resource_version = (lst.get("metadata") or {}).get("resourceVersion")

    # -- rounds -------------------------------------------------------------------------
    def tick_due(self) -> None:
        now = self.clock()
        for key, runner in list(self.runners.items()):
            if runner.due(now):
                runner.tick(now)
                wall = now + (self._wall_offset() if self._wall_offset else 0.0)
                self._write_status(key, runner.status(_iso(wall)))

    def _write_status(self, key: Key, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, key[0], PLURAL, key[1], {"status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=self.request_timeout_s)
        except ApiException as e:
            log.warning("%s/%s: status not written (HTTP %s %s)", *key, e.status, e.reason)
        except Exception as e:
            err = transport_error(e, f"{PLURAL}.{GROUP}/{key[0]}/{key[1]}/status", "patch",
                                  self.request_timeout_s)
            if err is None:
                raise
            log.warning("%s/%s: status not written (%s)", *key, err)

    def _seconds_to_next_round(self) -> float:
        now = self.clock()
        nexts = [r.next_at for r in self.runners.values() if not r.spec.suspend]
        return min([self.watch_timeout_s] + [max(0.0, t - now) for t in nexts])

    # -- the loop -----------------------------------------------------------------------
    def run_once(self) -> None:
        """List if needed, then one watch (until the next round is due), ticking rounds."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        try:
            if self.resource_version is None:
                self.sync()
            self.tick_due()
            timeout = max(1, math.ceil(self._seconds_to_next_round()))
            w = watch.Watch()
            fn: Callable[..., object]
            args: tuple[Any, ...]
            if self.namespace:
                fn, args = self.custom.list_namespaced_custom_object, (
                    GROUP, VERSION, self.namespace, PLURAL)
            else:
                fn, args = self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
            for ev in w.stream(fn, *args, resource_version=self.resource_version,
                               timeout_seconds=timeout, _request_timeout=timeout + 10):
                if not ev:  # the client yields None for a keep-alive blank line
                    continue
                obj = ev["raw_object"]
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                self.handle(ev["type"], obj)
                if rv:
                    self.resource_version = rv
                self.tick_due()
            self.tick_due()
            self._backoff = 1.0
        except ApiException as e:
            if e.status == 410:
                log.info("watch expired (410 Gone); relisting")
                self.resource_version = None
                return
            self._pause(f"HTTP {e.status} {e.reason}")
        except OSError as e:  # connection refused / reset, timeouts (urllib3 errors)
            self._pause(repr(e))
        except Exception as e:
            # urllib3 wraps connection failures in its own exception types.
            if type(e).__module__.startswith("urllib3"):
                self._pause(repr(e))
            else:
                raise

    def _pause(self, why: str) -> None:
        log.warning("Kubernetes API unavailable (%s); retrying in %.0f s", why, self._backoff)
        self.sleep(self._backoff)
        self._backoff = min(30.0, self._backoff * 2)
        self.resource_version = None

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("operator watching %s in %s", PLURAL,
                 f"namespace {self.namespace}" if self.namespace else "all namespaces")
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        for key in list(self.runners):
            self._drop(key)

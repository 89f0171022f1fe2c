"""Attach SAIR to a running Serve app from Python: `sair_ray.attach(app, config)`.

    import ray, sair_ray
    ray.init(address="auto")
    handle = sair_ray.attach("image_classification", {"loop": {"decision_interval_s": 15}})
    handle.status()          # rounds, memory size, last decision, errors
    handle.decisions(last=5) # recent decision summaries (the full log: decisions.jsonl)
    handle.stop()            # stop and remove the controller actor

The controller is a detached actor, so it keeps running after this driver exits;
`sair_ray.live.get_handle(app)` finds it again from any driver.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sair_ray.config import SAIRConfig
from sair_ray.files import DATA_DIR_ENV
from sair_ray.live.actor import NAMESPACE, ControllerActor, actor_name, actor_options
from sair_ray.live.loop import LiveOptions
from sair_ray.registry import check_params, get_live

log = logging.getLogger(__name__)


class AttachError(RuntimeError):
    """The controller actor could not be started or reached."""


class AttachHandle:
    """A driver-side handle on an app's controller actor."""

    def __init__(self, app: str, actor: Any, timeout_s: float = 30.0) -> None:
        self.app = app
        self.actor = actor
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"AttachHandle({self.app!r})"

    def _get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref, timeout=self.timeout_s)

    def status(self) -> dict[str, Any]:
        """Rounds done and failed, memory size, last decision, recent external changes and
        actuation errors, controller CPU use."""
        return self._get(self.actor.status.remote())

    def decisions(self, last: int = 10) -> list[dict[str, Any]]:
        """Summaries of the last `last` decisions, oldest first."""
        return self._get(self.actor.decisions.remote(last))

    def options(self) -> dict[str, Any]:
        return self._get(self.actor.get_options.remote())

    def dead_reason(self) -> str | None:
        """Why the controller's loop ended without a stop (the actor is up but no longer
        deciding); None while it runs."""
        return self._get(self.actor.dead_reason.remote())

    def stop(self) -> dict[str, Any]:
        """Stop the loop (after the round in progress), then remove the actor. Memory,
        state and decision log stay in the data dir, for the next attach to resume."""
        import ray

        final = self._get(self.actor.stop.remote())
        ray.kill(self.actor, no_restart=True)
        return final


def _config_dict(config: SAIRConfig | Mapping[str, Any] | str | os.PathLike[str] | None
                 ) -> dict[str, Any]:
    if config is None:
        return SAIRConfig().to_dict()
    if isinstance(config, SAIRConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return SAIRConfig.from_dict(config).to_dict()  # validate here, name the bad key
    return SAIRConfig.from_yaml(config).to_dict()


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", log_to_driver=False)


def live_options(app: str, config: Any = None, policy: str = "sair", *,
                 profile: str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 dashboard_url: str | None = None,
                 policy_params: Mapping[str, Any] | None = None) -> LiveOptions:
    """Options resolved on the driver: paths made absolute (the actor's working directory
    is not the driver's) and $SAIR_DATA_DIR carried over (the actor does not inherit the
    driver's environment). `policy_params` are checked against the policy's constructor
    here, so a misspelt setting is an error on the driver, not a retrying actor."""
    info = get_live(policy)  # PolicyError on the driver, not a retrying actor
    params = dict(policy_params or {})
    check_params(info, params)
    base = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    prof = None
    if profile is not None:
        p = Path(profile).expanduser()
        prof = str(p.resolve()) if p.exists() or p.suffix in (".yaml", ".yml") else str(profile)
    return LiveOptions(app=app, config=_config_dict(config), policy=policy, profile=prof,
                       data_dir=str(Path(base).expanduser().resolve()) if base else None,
                       dashboard_url=dashboard_url, policy_params=params)


def attach(app: str, config: SAIRConfig | Mapping[str, Any] | str | None = None,
           policy: str = "sair", *, profile: str | os.PathLike[str] | None = None,
           data_dir: str | os.PathLike[str] | None = None, dashboard_url: str | None = None,
           address: str | None = None, check: bool = True,
           timeout_s: float = 60.0,
           policy_params: Mapping[str, Any] | None = None) -> AttachHandle:
    """Start (or find) the controller actor of Serve app `app` and return a handle.

    With `check` (default) the app is checked from this driver first, so a missing app, a
    stage without a deployment or an app without `external_scaler_enabled` is an error
    here (`ServeSetupError`) rather than a retrying actor. An app that already has a
    controller keeps it; attaching with a different policy is refused (stop it first).
    """
    import ray

    _connect(address)
    opts = live_options(app, config, policy, profile=profile, data_dir=data_dir,
                        dashboard_url=dashboard_url, policy_params=policy_params)
    existing = get_handle(app)
    if existing is not None and _replace_if_dead(app, existing.actor, timeout_s):
        existing = None
    if existing is not None:
        have = existing.options()
        if have.get("policy") != policy:
            raise AttachError(f"app {app!r} already has a SAIR controller with policy "
                              f"{have.get('policy')!r}; stop it first (sair detach {app})")
        log.info("app %r already has a controller; returning it", app)
        return existing
    if check:
        from sair_ray.live.loop import ray_serve_backend

        ray_serve_backend(opts)
    actor = ray.remote(ControllerActor).options(**actor_options(app)).remote(
        opts.__dict__ | {"config": dict(opts.config)})
    handle = AttachHandle(app, actor)
    try:
        # ray types the methods of a handle to an undecorated actor class as plain methods
        ray.get(actor.ping.remote(), timeout=timeout_s)  # type: ignore[attr-defined]
    except Exception as e:
        raise AttachError(f"the SAIR controller actor for {app!r} did not start: {e}") from e
    return handle


def _replace_if_dead(app: str, actor: Any, timeout_s: float = 30.0) -> bool:
    """If `actor`'s loop is dead (`ControllerActor.dead_reason`), kill it and wait until
    its name is free, so that the caller starts a fresh one; True if it did. An actor that
    does not answer in `timeout_s` is left alone (it may still be starting)."""
    import time

    import ray

    try:
        why = ray.get(actor.dead_reason.remote(), timeout=timeout_s)
    except Exception as e:  # starting, unreachable, or an older actor without the method
        log.debug("could not ask %s whether its loop is alive: %s", actor_name(app), e)
        return False
    if why is None:
        return False
    log.warning("the SAIR controller of %r is dead (%s); replacing it", app, why)
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(actor_name(app), namespace=NAMESPACE)
        except ValueError:
            return True
        time.sleep(0.2)
    raise AttachError(f"the dead SAIR controller of {app!r} was killed but its name is still "
                      f"taken after {timeout_s:.0f} s")


def get_handle(app: str) -> AttachHandle | None:
    """The handle of app's running controller, or None."""
    import ray

    try:
        return AttachHandle(app, ray.get_actor(actor_name(app), namespace=NAMESPACE))
    except ValueError:
        return None


def detach(app: str, *, address: str | None = None) -> dict[str, Any] | None:
    """Stop app's controller; its final status, or None if none was attached."""
    _connect(address)
    h = get_handle(app)
    return h.stop() if h is not None else None


def ensure_attached(app: str, *, policy: str | None = None, config: Any = None,
                    profile: str | None = None) -> Any:
    """Bring SAIR up with a Serve app: call from the ingress deployment's constructor.

    Creates the app's controller actor if there is none (idempotent across ingress
    replicas: the actor is named), without waiting for it: the app is still deploying,
    and the controller retries setup every round until its deployments are there.
    Policy and config default to $SAIR_POLICY (else "sair") and $SAIR_CONFIG (a YAML path);
    $SAIR_ATTACH=0 turns this off. Never raises: a failure is logged and serving goes on.
    """
    import ray

    if os.environ.get("SAIR_ATTACH", "1") == "0":
        return None
    try:
        opts = live_options(app, config if config is not None
                            else os.environ.get("SAIR_CONFIG") or None,
                            policy or os.environ.get("SAIR_POLICY", "sair"), profile=profile)
        actor = ray.remote(ControllerActor).options(**actor_options(app)).remote(
            opts.__dict__ | {"config": dict(opts.config)})
        if _replace_if_dead(app, actor, timeout_s=2.0):  # an earlier one whose loop died
            actor = ray.remote(ControllerActor).options(**actor_options(app)).remote(
                opts.__dict__ | {"config": dict(opts.config)})
        return actor
    except Exception as e:
        log.error("SAIR could not attach to %r: %s", app, e)
        return None

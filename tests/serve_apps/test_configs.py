"""The serve config YAMLs pass Ray Serve's own schema and are set up for SAIR; the
application builders check their arguments."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from sair_ray.profiles import load_profile
from serve_apps import APPS, app_module, config_path
from serve_apps.serving import build


@pytest.mark.parametrize("app", APPS)
def test_config_is_valid_serve_schema_with_external_scaler(app: str) -> None:
    raw = yaml.safe_load(config_path(app).read_text())
    schema = ServeDeploySchema.model_validate(raw)   # Ray Serve's validator
    (a,) = schema.applications
    assert a.name == app and a.route_prefix == f"/{app}"
    assert a.external_scaler_enabled is True
    stages = list(load_profile(app).pipeline.stage_names)
    assert a.deployment_names == ["ingress", *stages]
    for d in a.deployments:
        assert d.num_replicas == 1 and not d.is_autoscaling_configured()
    module, attr = a.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_builder_uses_profile_resources_and_honours_device_and_replicas(tmp_path) -> None:
    mod = app_module("image_classification")
    built = mod.build_app({"device": "gpu", "replicas": {"preprocess": 3},
                           "shim_dir": str(tmp_path / "gpu")})
    deps = {d.name: d for d in _deployments(built)}
    assert set(deps) == {"ingress", "preprocess", "inference", "postprocess"}
    assert deps["preprocess"].num_replicas == 3
    assert deps["preprocess"].ray_actor_options["num_cpus"] == 1.0
    assert deps["preprocess"].ray_actor_options["memory"] == 1024 * 1024 * 1024
    assert deps["inference"].ray_actor_options["num_gpus"] == 1
    assert deps["inference"].ray_actor_options["num_cpus"] == 2.0
    # the GPU stage loads the cuda_tb shim (built for real), the others do not
    env = deps["inference"].ray_actor_options["runtime_env"]["env_vars"]
    assert env["LD_PRELOAD"].endswith(".so") and Path(env["LD_PRELOAD"]).is_file()
    assert env["CUDA_TB_SOCKET"] == str(tmp_path / "gpu" / "cuda_tb-%p.sock")
    assert "runtime_env" not in deps["preprocess"].ray_actor_options
    no_shim = {d.name: d for d in _deployments(mod.build_app({"device": "gpu",
                                                                "gpu_shim": False}))}
    assert "runtime_env" not in no_shim["inference"].ray_actor_options
    cpu = {d.name: d for d in _deployments(mod.build_app({"device": "cpu",
                                                         "reserve_memory": False}))}
    assert "memory" not in cpu["preprocess"].ray_actor_options
    assert "num_gpus" not in cpu["inference"].ray_actor_options
    assert cpu["ingress"].ray_actor_options["num_cpus"] == 0


@pytest.mark.parametrize(("args", "needle"), [
    ({"colour": "red"}, "unknown argument(s) ['colour']"),
    ({"device": "tpu"}, "'tpu'"),
    ({"replicas": {"embed": 2}}, "unknown stage(s) ['embed']"),
    ({"replicas": {"preprocess": 0}}, "'preprocess'"),
])
def test_bad_builder_arguments_are_named(args: dict, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        build(app_module("image_classification").DEFINITION, args)
    assert needle in str(e.value)


def test_unknown_app_is_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        app_module("nope")


def _deployments(app: object) -> list:
    from ray.serve._private.build_app import build_app as serve_build

    return serve_build(app, name="t").deployments

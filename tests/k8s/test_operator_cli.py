"""`sair operator` as a process: kubeconfig loading, live actuation, SIGTERM, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sair_ray.cli import app
from tests.k8s.apiserver import ApiServer
from tests.k8s.helpers import AUTOSCALERS, RAYSERVICES, autoscaler, replicas, sample, wait_for

pytestmark = pytest.mark.timeout(120)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    return path


def test_operator_process_scales_and_stops_on_sigterm(apiserver: ApiServer,
                                                      tmp_path: Path) -> None:
    apiserver.store.create(RAYSERVICES, "default", sample("rayservice.yaml"))
    apiserver.store.create(AUTOSCALERS, "default", autoscaler())
    env = {**os.environ, "SAIR_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sair_ray.cli", "operator", "--kubeconfig",
         str(kubeconfig(tmp_path / "kubeconfig", apiserver.url))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: replicas(apiserver, "preprocess") > 1 or proc.poll() is not None,
                 timeout=60, what="the operator process to scale preprocess")
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert (tmp_path / "data" / "k8s" / "default" / "imgcls" / "decisions.jsonl").exists()
    # Every request carried the kubeconfig user's token.
    assert {r.authorization for r in apiserver.store.requests} == {"Bearer t"}


def test_unusable_kubeconfig_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "kc"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    res = CliRunner().invoke(app, ["operator", "--kubeconfig", str(bad)])
    assert res.exit_code == 2
    assert "no usable Kubernetes configuration" in res.output and "kc" in res.output


def test_namespace_flags_exclude_each_other(tmp_path: Path, apiserver: ApiServer) -> None:
    res = CliRunner().invoke(app, ["operator", "--namespace", "a", "--all-namespaces",
                                   "--kubeconfig",
                                   str(kubeconfig(tmp_path / "k", apiserver.url))])
    assert res.exit_code == 2 and "exclude each other" in res.output

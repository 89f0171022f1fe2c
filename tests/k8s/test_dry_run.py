"""`sair operator --dry-run`: the CLI prints the patches for the sample RayService."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sair_ray.cli import app
from sair_ray.operator.dry_run import dry_run
from tests.k8s.helpers import ROOT

SAMPLES = ROOT / "deploy" / "samples"


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the CLI's defaults are deploy/samples/...


def test_dry_run_patches_the_bottleneck_and_keeps_the_rest() -> None:
    res = dry_run(SAMPLES / "rayservice.yaml", SAMPLES / "pipelineautoscaler.yaml", rounds=4)
    # The sample's policy is SAIR's LLM; the dry run calls no LM endpoint and says so.
    assert res.policy == "hpa" and "does not use" in res.note
    patches = [p for r in res.rounds for p in r.patches]
    assert patches, "50 req/s on one preprocess replica must be scaled up"
    first = patches[0]
    assert first.object == "rayservices.ray.io/default/imgcls"
    assert set(first.body) == {"metadata", "spec"} and set(first.body["spec"]) == {
        "serveConfigV2"}
    assert any(c.field == "num_replicas" and c.where.endswith("/preprocess")
               and c.new > c.old for c in first.changes)
    # The final object still carries everything SAIR does not own.
    final = res.rayservice.get()
    original = yaml.safe_load((SAMPLES / "rayservice.yaml").read_text())
    assert final["spec"]["rayClusterConfig"] == original["spec"]["rayClusterConfig"]
    doc = yaml.safe_load(final["spec"]["serveConfigV2"])
    assert doc["http_options"]["request_timeout_s"] == 30
    assert doc["logging_config"] == {"encoding": "JSON", "log_level": "INFO"}


def test_cli_prints_the_patches() -> None:
    res = CliRunner().invoke(app, ["operator", "--dry-run", "--rounds", "3"])
    assert res.exit_code == 0, res.output
    assert "PATCH rayservices.ray.io/default/imgcls (application/merge-patch+json)" in res.output
    assert "serve:image_classification/preprocess num_replicas: 1 -> " in res.output
    assert "resourceVersion" in res.output and "serveConfigV2: |" in res.output


def test_cli_json_output_is_one_object_per_round() -> None:
    res = CliRunner().invoke(app, ["operator", "--dry-run", "--policy", "threshold",
                                   "--rounds", "2", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [r["round"] for r in lines] == [1, 2]
    assert all(r["source"] == "policy:threshold" for r in lines)
    patches = [p for r in lines for p in r["patches"]]
    assert patches and patches[0]["body"]["metadata"]["resourceVersion"] == "1"


def test_cli_names_a_missing_manifest(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["operator", "--dry-run", "--rayservice",
                                   str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2
    assert "nope.yaml" in res.output


def test_cli_rejects_a_mismatched_rayservice(tmp_path: Path) -> None:
    rs = yaml.safe_load((SAMPLES / "rayservice.yaml").read_text())
    rs["metadata"]["name"] = "other"
    path = tmp_path / "rs.yaml"
    path.write_text(yaml.safe_dump(rs))
    res = CliRunner().invoke(app, ["operator", "--dry-run", "--rayservice", str(path)])
    assert res.exit_code == 2
    assert "names RayService 'imgcls'" in res.output and "'other'" in res.output


@pytest.mark.parametrize("args, message", [
    (["--profile", "nlp_analysis"], "has stages ['tokenize'"),
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--policy", "oracle"], "clairvoyant"),
])
def test_cli_names_what_cannot_run(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["operator", "--dry-run", *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())

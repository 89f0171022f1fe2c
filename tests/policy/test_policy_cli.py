"""`sair policy`: clear errors for what cannot run here."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from sair_ray.cli import app

runner = CliRunner()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_backend_says_what_to_install():
    r = runner.invoke(app, ["policy", "serve", "--backend", "vllm", "--model", "m"])
    assert r.exit_code == 2
    assert "pip install 'sair-ray[gpu]'" in r.output


def test_bad_backend_and_missing_model():
    r = runner.invoke(app, ["policy", "serve", "--backend", "tgi"])
    assert r.exit_code == 2 and "unknown --backend 'tgi'" in r.output
    r = runner.invoke(app, ["policy", "serve", "--backend", "vllm"])
    assert r.exit_code == 2 and "needs --model" in r.output
    r = runner.invoke(app, ["policy", "serve", "--model", "/nonexistent.gguf"])
    assert r.exit_code == 2 and "is not a GGUF file" in r.output


def test_check_reports_an_unreachable_endpoint(tmp_path):
    cfg = tmp_path / "sair.yaml"
    cfg.write_text("policy: {backend: openai, url: 'http://127.0.0.1:9/v1', model: m, "
                   "llm_timeout_s: 5}\n")
    r = runner.invoke(app, ["policy", "check", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "LLM call failed" in r.output

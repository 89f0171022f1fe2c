"""`sair status` / `sair top`: the shared view from a real LiveLoop's status (simulator
backend, no Ray), from a real controller's decision log, and `sair top` as a process that
follows a growing log until Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sair_ray.backends.sim import SimBackend
from sair_ray.cli import app
from sair_ray.live.loop import LiveLoop, LiveOptions
from sair_ray.report import load
from sair_ray.report.records import LogReader
from sair_ray.report.status_view import from_log, from_status, render
from sair_ray.reward import TERMS
from tests.ray_harness import private_ray
from tests.report.conftest import ROUNDS

runner = CliRunner()
CFG = {"loop": {"decision_interval_s": 10, "settle_s": 2}}


def _text(renderable) -> str:
    c = Console(record=True, width=220, color_system=None)
    c.print(renderable)
    return c.export_text()


def test_live_status_shows_stages_resources_sla_epsilon_memory_and_reward(tmp_path):
    opts = LiveOptions(app="image_classification", config=CFG, policy="sair-retrieval",
                       data_dir=str(tmp_path))
    loop = LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=3))
    for t in range(10, 250, 10):
        loop.round(t)
    st, recent = loop.status(), loop.decisions(5)
    loop.close()
    json.dumps({"status": st, "decisions": recent})  # what `sair status --json` prints
    last = st["last_decision"]
    assert {s["kind"] for s in last["stages"].values()} == {"cpu", "gpu"}
    assert set(TERMS) <= set(st["last_reward"]) and st["learns"]

    text = _text(render(from_status(st, recent)))
    assert "policy sair-retrieval · 24 rounds" in text
    assert f"ε {st['epsilon']:.3f}" in text
    assert f"memory {st['memory_size']} experiences" in text and st["memory_size"] > 0
    assert f"p99 {last['p99_ms']:,.0f} ms / SLA {last['sla_ms']:,.0f} ms" in text
    for name, s in last["stages"].items():
        row = next(ln for ln in text.splitlines() if ln.lstrip("│ ").startswith(name))
        cells = row.strip("│ ").split()
        assert cells[1:5] == [s["kind"], str(s["replicas"]), str(s["cpu_m"]),
                              str(s["mem_mb"])], row
        # only the GPU stage has a rate setting
        assert cells[5] == (f"{s['rate']:.2f}" if s["kind"] == "gpu" else "-"), row
    assert f"last decision: round {last['round']}" in text
    assert f"reward of round {last['round'] - 1}'s action: total" in text
    assert all(f"{t} " in text for t in TERMS)
    assert "recent rounds" in text and [d["round"] for d in recent] == list(range(19, 24))


def test_top_once_shows_the_latest_round_of_a_log(sim_run):
    path, decisions, ctl = sim_run
    res = runner.invoke(app, ["top", str(path.parent), "--once"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    last = decisions[-1]
    assert f"policy threshold · {ROUNDS} rounds · ε {last.epsilon:.3f}" in res.output
    assert f"memory {ctl.counters.stored} experiences remembered" in res.output
    assert f"last decision: round {ROUNDS - 1}" in res.output
    assert f"reward of round {ROUNDS - 2}'s action" in res.output
    for s in last.context.stages:
        assert s.name in res.output
    view = from_log(load(path), last=3)
    assert [d["round"] for d in view.rounds] == [ROUNDS - 3, ROUNDS - 2, ROUNDS - 1]


def test_log_reader_reads_only_what_was_appended(sim_run, tmp_path):
    path, _, _ = sim_run
    lines = path.read_bytes().splitlines(keepends=True)
    grow = tmp_path / "decisions.jsonl"
    grow.write_bytes(b"".join(lines[:40]) + lines[40][:25])  # a torn line being written
    reader = LogReader(grow, keep=4)
    first = reader.read()
    assert len(first.decisions) <= 4
    with open(grow, "ab") as f:
        f.write(lines[40][25:] + b"".join(lines[41:]))
    full, grown = load(path), reader.read()
    assert grown.decisions == full.decisions[-4:]
    assert grown.remembered == full.remembered > 0
    grow.unlink()  # replaced (a rerun of the same scenario): read from its start
    grow.write_bytes(b"".join(lines[:10]))
    assert reader.read().decisions == load(grow).decisions[-4:]


def test_top_follows_a_log_until_ctrl_c(sim_run, tmp_path):
    path, _, _ = sim_run
    lines = path.read_bytes().splitlines(keepends=True)
    log = tmp_path / "decisions.jsonl"
    log.write_bytes(b"".join(lines[:20]))
    screen = tmp_path / "screen.txt"

    def shown() -> str:   # the screen as text: escape sequences (cursor moves, styles) out
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.read_text(errors="replace"))

    def wait_for(cond, timeout_s: float) -> None:
        # polled rather than slept: imports and the first frame took from 2 s to over 8 s
        # on a 2-core machine, depending on what else ran (the frames reach the file
        # as they are drawn because the console is told it is a terminal)
        deadline = time.time() + timeout_s
        while not cond() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)

    with open(screen, "w") as out_f:
        proc = subprocess.Popen([sys.executable, "-m", "sair_ray.cli", "top", str(log),
                                 "--interval", "0.3"], stdout=out_f,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200", "TERM": "xterm",
                                     "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1",
                                     "NO_COLOR": "1"})
        try:
            wait_for(lambda: "last decision: round" in shown(), 60)
            with open(log, "ab") as f:
                f.write(b"".join(lines[20:]))
            wait_for(lambda: f"last decision: round {ROUNDS - 1}" in shown(), 30)
            proc.send_signal(signal.SIGINT)
            _, errs = proc.communicate(timeout=90)
        finally:
            proc.kill()
    out = shown()
    assert proc.returncode == 0, errs[-2000:]
    assert "Traceback" not in errs
    assert f"last decision: round {ROUNDS - 1}" in out  # it saw the log grow


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_status_and_top_read_a_real_controller_actor(tmp_path):
    """The live path end to end: a real controller actor on a private Ray node, read by
    `sair status` and `sair top --once` in their own processes. No Serve app runs, so its
    rounds fail and retry: the view must say so, not crash."""
    pytest.importorskip("ray")
    from sair_ray.live import attach

    app_name = f"status-{uuid.uuid4().hex[:6]}"
    with private_ray(1) as ray_:
        handle = attach(app_name, {"loop": {"decision_interval_s": 1}}, "threshold",
                        data_dir=tmp_path, check=False, timeout_s=120)
        deadline = time.monotonic() + 60
        while handle.status()["rounds_failed"] < 1 and time.monotonic() < deadline:
            time.sleep(1)
        address = ray_.address
        outs = {}
        for cmd in (["status", app_name], ["top", app_name, "--once"]):
            r = subprocess.run([sys.executable, "-m", "sair_ray.cli", *cmd, "--address",
                                address], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "COLUMNS": "200"})
            assert r.returncode == 0, r.stderr[-2000:]
            outs[cmd[0]] = r.stdout
        handle.stop()
    for text in outs.values():
        assert f"SAIR · {app_name}" in text and "policy threshold · 0 rounds" in text
        assert "last error: setup:" in text and "no decision yet" in text


def test_model_text_and_names_are_shown_as_text_not_markup():
    """A rationale is the model's text and names are the user's: `[/]` and `[bold]` in
    them are shown as written (rich would raise MarkupError on `[/]`)."""
    from sair_ray.report.status_view import StatusView

    rounds = [{"round": i, "time": 100.0 + i, "source": "policy:sair",
               "action": {"pre[x]": {"replicas": 1}},
               "rationale": "scale [/] up [bold]now[/bold]", "error": "",
               "context": {"p99_ms": 900.0, "sla_ms": 1000.0,
                           "stages": [{"name": "pre[x]", "kind": "cpu", "replicas": 1}]}}
              for i in range(3)]
    view = StatusView(app="my[/]app", origin="o [/]", policy="sair", rounds_done=3,
                      epsilon=0.1, memory="m", rounds=rounds)
    text = _text(render(view))
    assert "SAIR · my[/]app" in text
    assert "why: scale [/] up [bold]now[/bold]" in text
    assert "scale [/] up [bold]now[/bold]" in text.split("recent rounds")[1]
    assert "pre[x]:1" in text and "pre[x]: replicas +1" in text
    row = next(ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("pre[x]"))
    assert "replicas +1" in row

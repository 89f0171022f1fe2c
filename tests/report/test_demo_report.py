"""The demo's report is `sair report`'s page (no plotting of its own): written from the
decision log of a real LiveLoop (simulator backend, so no Ray), next to the Markdown
summary of the load and the scaling decisions."""

from __future__ import annotations

from sair_ray.backends.sim import SimBackend
from sair_ray.live.demo import DEMO_CONFIG, DemoOptions, Sample, write_report
from sair_ray.live.loop import LiveLoop, LiveOptions
from sair_ray.loadgen.runner import RequestResult, summarize


def test_demo_writes_the_shared_html_report_and_its_summary(tmp_path):
    opts = LiveOptions(app="image_classification", config=DEMO_CONFIG, policy="threshold",
                       data_dir=str(tmp_path / "sair-data"))
    loop = LiveLoop(opts, backend_factory=lambda o: SimBackend(o.app, seed=2))
    t0 = 0.0
    for t in range(15, 195, 15):
        loop.round(t)
    loop.close()
    decisions, status = loop.decisions(1000), loop.status()
    results = [RequestResult(i, i * 0.5, "ok", i * 0.5, t0 + i * 0.5, 120.0 + i, 200)
               for i in range(20)]
    samples = [Sample(float(t), 2.0, 130.0, {"preprocess": {"replicas": 1, "queue": 0,
                                                             "p99_ms": 110.0, "util": 0.4}})
               for t in (2, 4, 6)]
    md = write_report(tmp_path / "out", DemoOptions(), samples, t0, decisions, status,
                      results, summarize(results, 10.0), 1000.0, False,
                      loop.dir / "decisions.jsonl")
    out = md.parent
    page = (out / "report.html").read_text()
    # every output says what the pipeline computes with
    assert "SAIR report: image_classification (emulated compute, time scale 10)" in page
    assert f"<th>rounds</th><td>{len(decisions)}</td>" in page
    assert {p.name for p in out.glob("*.png")} == {
        "latency.png", "allocation.png", "reward.png", "decisions.png", "pareto.png"}
    text = md.read_text()
    assert text.startswith("# SAIR demo: image_classification (emulated compute, time scale 10)")
    assert "[report.html](report.html)" in text and "| 20 | 20 | 0 |" in text
    # a 10 s run holds no second spike: the SLA after the first is not judged
    assert "p99 after the first spike is not judged: the run ends before a whole second " \
        "spike." in text
    assert "| warm-up | 0-30 | 1 | 20 | 139 | 1000 | yes |" in text
    scaled = [d for d in decisions if any(a.get("replicas") for a in d["action"].values())]
    assert scaled and all(f"| {d['round']} |" in text for d in scaled)
    assert (out / "timeline.csv").read_text().count("\n") == 1 + len(samples)
    from sair_ray.live.demo import check_summary
    assert check_summary(out) == []  # every request answered, page written


def test_demo_check_fails_on_a_lost_request_or_a_missing_page(tmp_path):
    """`sair demo --check` (CI's smoke test) passes only when every sent request was
    answered and the report page exists."""
    import json

    from sair_ray.live.demo import check_summary

    assert check_summary(tmp_path) == [f"no {tmp_path / 'summary.json'} (the run did not finish)"]
    good = {"interrupted": False, "planned": 20, "sent": 20, "answered": 20,
            "report_html": "report.html"}
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "summary.json").write_text(json.dumps(good))
    assert check_summary(tmp_path) == []
    (tmp_path / "summary.json").write_text(json.dumps({**good, "answered": 19}))
    assert check_summary(tmp_path) == ["1 of 20 requests got no answer"]
    (tmp_path / "report.html").unlink()
    (tmp_path / "summary.json").write_text(json.dumps(good))
    assert check_summary(tmp_path) == ["report.html was not written"]


def test_load_phases_and_the_sla_verdict_after_the_first_spike(tmp_path):
    """The demo judges p99 per load phase after the first spike, and only in runs that hold
    a whole second spike; `--check` fails on a phase over the SLA there."""
    import json

    from sair_ray.live.demo import after_first_spike, check_summary, phases, windows

    opts = DemoOptions(duration_s=300.0)   # warm-up 30 s, 45 s spikes every 90 s
    assert [(p.name, p.start_s, p.end_s, p.rps) for p in phases(opts)] == [
        ("warm-up", 0, 30, 1.0), ("spike 1", 30, 75, 3.0), ("base 1", 75, 120, 1.0),
        ("spike 2", 120, 165, 3.0), ("base 2", 165, 210, 1.0), ("spike 3", 210, 255, 3.0),
        ("base 3", 255, 300, 1.0)]

    def run(latency_ms):
        return [RequestResult(i, t, "ok", t, t, latency_ms(t), 200)
                for i, t in enumerate(float(x) for x in range(0, 300, 2))]

    slow_first = run(lambda t: 30_000.0 if 30 <= t < 75 else 2_000.0)
    v = after_first_spike(opts, windows(opts, slow_first), 10_000.0)
    assert v["checked"] and v["held"] and v["phases_over_sla"] == []
    late = run(lambda t: 30_000.0 if 120 <= t < 130 else 2_000.0)
    v = after_first_spike(opts, windows(opts, late), 10_000.0)
    assert v["checked"] and not v["held"] and v["phases_over_sla"] == ["spike 2"]
    ci = DemoOptions(duration_s=60.0)      # CI's smoke run: inside the first spike
    v = after_first_spike(ci, windows(ci, [r for r in late if r.scheduled_s < 60]), 10_000.0)
    assert not v["checked"] and not v["held"]

    good = {"interrupted": False, "planned": 20, "sent": 20, "answered": 20,
            "report_html": "report.html", "sla_ms": 10_000.0}
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "summary.json").write_text(json.dumps(
        {**good, "after_first_spike": after_first_spike(opts, windows(opts, late), 1e4)}))
    assert check_summary(tmp_path) == [
        "p99 over the 10000 ms SLA after the first spike, in spike 2"]
    (tmp_path / "summary.json").write_text(json.dumps({**good, "after_first_spike": v}))
    assert check_summary(tmp_path) == []   # not judged: passes on the other checks


def test_the_emulated_demo_app_and_its_controller_profile():
    """The default demo: the emulated app's config (router back-off capped, the ingress
    reserving what the controller's profile pins), the controller's profile (SLA x time
    scale, replicas capped, CPU and memory pinned, the ingress as a pinned stage) and the
    simulator's requests for the burst load."""
    import numpy as np

    from sair_ray.emulate import controller_profile
    from sair_ray.live.demo import (
        EMULATED_CONFIG,
        INGRESS_CPU_M,
        ROUTER_MAX_BACKOFF_S,
        emulated_app_config,
        emulated_requests,
    )

    opts = DemoOptions()
    assert not opts.real_models and opts.label == "emulated compute, time scale 10"
    real = DemoOptions.for_mode(True, duration_s=None, base_rps=None)
    assert real.label == "real models" and (real.duration_s, real.base_rps) == (180.0, 2.0)
    app = emulated_app_config(opts, cold_start=True)["applications"][0]
    assert app["external_scaler_enabled"] and app["args"]["time_scale"] == 10.0
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["ingress"]["ray_actor_options"] == {"num_cpus": INGRESS_CPU_M / 1000}
    assert deps["preprocess"]["num_replicas"] == 1
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S"] == \
        f"{ROUTER_MAX_BACKOFF_S:g}"
    prof = controller_profile("image_classification", 10.0, replicas_max=4)
    assert prof["sla_ms"] == 10_000.0
    assert [s["name"] for s in prof["stages"]] == [
        "ingress", "preprocess", "inference", "postprocess"]
    pre = prof["stages"][1]
    assert pre["replicas_max"] == 4 and pre["cpu_m_min"] == pre["cpu_m_max"] == 1000
    assert prof["stages"][2]["replicas_max"] == 2     # inference: the cluster's 2 GPUs
    assert EMULATED_CONFIG["pipeline"] == {"metrics": "serve"}
    rp = emulated_requests(opts)
    spikes = (rp.times >= 30) & (rp.times < 75)
    assert abs(spikes.sum() / 45 - 3.0) < 0.6 and abs((rp.times < 30).sum() / 30 - 1.0) < 0.5
    # the preprocess stage's reference service times: the profile's 60 ms mean, x 10
    assert abs(float(np.mean(rp.refs[:, 0])) - 0.6) < 0.1

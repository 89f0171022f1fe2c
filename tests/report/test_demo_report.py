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
    assert "SAIR report: image_classification" in page
    assert f"<th>rounds</th><td>{len(decisions)}</td>" in page
    assert {p.name for p in out.glob("*.png")} == {
        "latency.png", "allocation.png", "reward.png", "decisions.png", "pareto.png"}
    text = md.read_text()
    assert "[report.html](report.html)" in text and "| 20 | 20 | 0 |" in text
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

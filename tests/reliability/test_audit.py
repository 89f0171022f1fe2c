"""Dependency audit: scripts/audit.sh and the judge it hands pip-audit's report
to (scripts/audit_check.py). The vulnerability services cannot be reached from CI, so
pip-audit is replaced here by a stand-in that answers the way pip-audit does (its JSON
report, or its crash output when the service is unreachable); everything else is the
real script on the real .venv. What the real pip-audit did on this machine is in
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.reliability.bad_inputs import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import audit_check  # noqa: E402

VULN = {"id": "PYSEC-2024-1", "fix_versions": ["9.9.9"], "aliases": ["CVE-2024-0001",
                                                                    "GHSA-aaaa-bbbb-cccc"],
        "description": "x"}


def report(*deps: dict) -> dict:
    return {"dependencies": list(deps), "fixes": []}


def test_unreviewed_vulnerability_fails_and_names_the_fix() -> None:
    v = audit_check.judge(report({"name": "aiohttp", "version": "1.0", "vulns": [VULN]},
                                 {"name": "numpy", "version": "2.0", "vulns": []}), {})
    assert v.code == 1
    text = "\n".join(v.lines)
    assert "aiohttp 1.0: PYSEC-2024-1 (CVE-2024-0001, GHSA-aaaa-bbbb-cccc)" in text
    assert "fixed in: 9.9.9" in text and "2 audited packages" in text


def test_reviewed_entry_matches_by_any_alias_and_only_for_its_package() -> None:
    ignore = audit_check.parse_ignore("cve-2024-0001  AIOHTTP  only the client is used  # ok\n")
    ok = audit_check.judge(report({"name": "aiohttp", "version": "1.0", "vulns": [VULN]}),
                           ignore)
    assert ok.code == 0 and "reviewed: aiohttp 1.0 PYSEC-2024-1 (only the client is used)" \
        in ok.lines
    other = audit_check.judge(report({"name": "yarl", "version": "1.0", "vulns": [VULN]}),
                              ignore)
    assert other.code == 1
    assert any("CVE-2024-0001 (aiohttp) matched nothing" in ln for ln in other.lines)


def test_ignore_entry_without_reason_is_refused() -> None:
    with pytest.raises(audit_check.IgnoreListError, match="list:2: .*needs its reason"):
        audit_check.parse_ignore("# header\nPYSEC-2024-1 aiohttp\n", "list")


def test_service_unusable_or_unreachable_skips_with_a_warning() -> None:
    none = audit_check.judge(report(
        {"name": "a", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        {"name": "b", "skip_reason": "Dependency not found on PyPI and could not be audited"}),
        {})
    assert none.code == 0 and none.lines[0].startswith("WARNING: dependency audit SKIPPED")
    down = audit_check.judge(None, {}, "Traceback ...\nrequests.exceptions.ConnectionError: "
                             "Max retries exceeded with url: /v1/query", 1)
    assert down.code == 0 and "could not be reached" in down.lines[0]
    crash = audit_check.judge(None, {}, "Traceback ...\nValueError: bad requirement", 1)
    assert crash.code == 2
    partial = audit_check.judge(report({"name": "a", "version": "1", "vulns": []},
                                       {"name": "b", "skip_reason": "not on PyPI"}), {})
    assert partial.code == 0 and "WARNING: not audited: b: not on PyPI" in partial.lines


FAKE = textwrap.dedent('''
    """Stands in for pip-audit: checks its arguments, then answers from $FAKE_ANSWER."""
    import json, os, sys
    args = sys.argv[1:]
    req = open(args[args.index("-r") + 1]).read().split()
    assert "--no-deps" in args and "--disable-pip" in args and args[args.index("-s") + 1]
    assert len(req) > 50 and all("==" in r for r in req), req[:5]
    answer = os.environ["FAKE_ANSWER"]
    if answer == "unreachable":
        sys.stderr.write("requests.exceptions.ConnectionError: HTTPSConnectionPool("
                         "host='api.osv.dev', port=443): Max retries exceeded\\n")
        sys.exit(1)
    names = [r.split("==")[0] for r in req]
    deps = [{"name": n, "version": "1", "vulns": []} for n in names]
    if answer == "vulnerable":
        deps[0]["vulns"] = [json.loads(os.environ["FAKE_VULN"])]
    if answer == "nothing":
        deps = [{"name": n, "skip_reason": "Dependency not found on PyPI and could not "
                 "be audited"} for n in names]
    open(args[args.index("-o") + 1], "w").write(json.dumps({"dependencies": deps}))
    sys.exit(1 if answer == "vulnerable" else 0)
''')


@pytest.mark.parametrize("answer,code,expect", [
    ("clean", 0, "ok: no unreviewed vulnerabilities"),
    ("vulnerable", 1, "FAIL: 1 unreviewed vulnerabilities"),
    ("reviewed", 0, "reviewed:"),
    ("unreachable", 0, "WARNING: dependency audit SKIPPED: the vulnerability service could "
                       "not be reached"),
    ("nothing", 0, "WARNING: dependency audit SKIPPED: the vulnerability service could audit "
                   "none of the"),
])
def test_audit_script_end_to_end(tmp_path: Path, answer: str, code: int, expect: str) -> None:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        pytest.skip("no .venv")
    fake = tmp_path / "fake_pip_audit.py"
    fake.write_text(FAKE)
    first = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all",
                            "--exclude-editable"], capture_output=True, text=True,
                           check=True).stdout.split()[0].split("==")[0]
    ignore = tmp_path / "ignore.txt"
    ignore.write_text(f"CVE-2024-0001 {first} reviewed in the test\n")
    env = {**os.environ, "PIP_AUDIT": f"{sys.executable} {fake}", "FAKE_ANSWER":
           "vulnerable" if answer == "reviewed" else answer, "FAKE_VULN": json.dumps(VULN),
           "AUDIT_IGNORE": str(ignore if answer == "reviewed" else tmp_path / "none.txt")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "audit.sh")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stdout + r.stderr
    assert expect in r.stdout + r.stderr

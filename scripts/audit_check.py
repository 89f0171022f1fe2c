"""Judge a pip-audit report against the reviewed ignore list (used by scripts/audit.sh).

    python scripts/audit_check.py REPORT.json IGNORE_FILE [--log PIP_AUDIT_OUTPUT] [--rc N]

REPORT.json is pip-audit's `-f json` output (absent or empty if pip-audit crashed), the
log is what pip-audit printed, and N its exit status. Exit status:

    0  no vulnerability outside the ignore list; or the vulnerability service could not
       be used (unreachable, or it could audit none of the packages): a WARNING says so
    1  vulnerabilities that no one has reviewed (each listed with its fix versions)
    2  the audit failed for another reason, or the ignore list is malformed

The ignore list has one reviewed vulnerability per line, `ID PACKAGE REASON...`, where ID
is the advisory id or any of its aliases (CVE, GHSA, PYSEC); `#` starts a comment. An
entry without a reason is refused: the list is for findings someone has looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What pip-audit prints when its vulnerability service cannot be reached at all.
UNREACHABLE = ("ConnectionError", "NameResolutionError", "Max retries exceeded",
               "Temporary failure in name resolution", "Name or service not known",
               "Connection refused", "Network is unreachable", "timed out", "ProxyError",
               "SSLError")


class IgnoreListError(ValueError):
    pass


@dataclass(frozen=True)
class Reviewed:
    package: str
    reason: str


@dataclass
class Verdict:
    code: int
    lines: list[str] = field(default_factory=list)


def parse_ignore(text: str, source: str = "ignore list") -> dict[str, Reviewed]:
    out: dict[str, Reviewed] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise IgnoreListError(f"{source}:{n}: expected `ID PACKAGE REASON...`, got "
                                  f"{raw.strip()!r} (a reviewed entry needs its reason)")
        vid, pkg, reason = parts
        out[vid.upper()] = Reviewed(pkg.lower(), reason)
    return out


def judge(report: dict[str, Any] | None, ignore: dict[str, Reviewed], log: str = "",
          rc: int = 0) -> Verdict:
    if not report:
        if any(p in log for p in UNREACHABLE):
            cause = next(ln for ln in reversed(log.splitlines()) if ln.strip()) if log else ""
            return Verdict(0, ["WARNING: dependency audit SKIPPED: the vulnerability service "
                               f"could not be reached ({cause[-300:]})"])
        return Verdict(2, [f"error: pip-audit failed (exit {rc}) without a report:",
                           *log.strip().splitlines()[-20:]])
    deps = report.get("dependencies") or []
    if not deps:
        return Verdict(2, ["error: pip-audit audited no dependencies (empty requirements?)"])
    skipped = [d for d in deps if d.get("skip_reason")]
    if len(skipped) == len(deps):
        return Verdict(0, [f"WARNING: dependency audit SKIPPED: the vulnerability service "
                           f"could audit none of the {len(deps)} packages (first reason: "
                           f"{skipped[0]['skip_reason']})"])
    lines: list[str] = []
    used: set[str] = set()
    unreviewed = []
    for d in deps:
        for v in d.get("vulns") or []:
            ids = [v["id"], *v.get("aliases", [])]
            hit = next((i.upper() for i in ids if i.upper() in ignore
                        and ignore[i.upper()].package == d["name"].lower()), None)
            if hit is not None:
                used.add(hit)
                lines.append(f"reviewed: {d['name']} {d.get('version', '')} {v['id']} "
                             f"({ignore[hit].reason})")
            else:
                unreviewed.append((d, v))
    for d in skipped:
        lines.append(f"WARNING: not audited: {d['name']}: {d['skip_reason']}")
    for vid in sorted(set(ignore) - used):
        lines.append(f"note: ignore-list entry {vid} ({ignore[vid].package}) matched nothing; "
                     "remove it if the package was upgraded")
    audited = len(deps) - len(skipped)
    if unreviewed:
        lines.append(f"FAIL: {len(unreviewed)} unreviewed vulnerabilities in {audited} "
                     "audited packages:")
        for d, v in unreviewed:
            fix = ", ".join(v.get("fix_versions") or []) or "none yet"
            aliases = ", ".join(v.get("aliases") or [])
            lines.append(f"  {d['name']} {d.get('version', '')}: {v['id']}"
                         f"{f' ({aliases})' if aliases else ''}; fixed in: {fix}")
        lines.append("Upgrade, or review and add `ID PACKAGE REASON` to the ignore list.")
        return Verdict(1, lines)
    lines.append(f"ok: no unreviewed vulnerabilities in {audited} audited packages")
    return Verdict(0, lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("ignore", type=Path)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--rc", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        ignore = parse_ignore(a.ignore.read_text(), str(a.ignore)) if a.ignore.exists() else {}
    except IgnoreListError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    text = a.report.read_text().strip() if a.report.exists() else ""
    report = json.loads(text) if text else None
    log = a.log.read_text(errors="replace") if a.log and a.log.exists() else ""
    v = judge(report, ignore, log, a.rc)
    stream = sys.stdout if v.code == 0 else sys.stderr
    stream.write("\n".join(v.lines) + "\n")
    return v.code


if __name__ == "__main__":
    sys.exit(main())

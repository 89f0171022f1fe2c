#!/usr/bin/env bash
# Dependency vulnerability audit (docs/reliability.md): pip-audit over every package installed in
# .venv (pinned by `pip freeze`), judged by scripts/audit_check.py against the reviewed
# ignore list scripts/audit-ignore.txt.
#
#   scripts/audit.sh                      # after `make venv` (CI: after `make test`)
#
# Exit 0: no unreviewed vulnerability, or the audit could not be done for want of network
# (pip-audit not installable, the vulnerability service unreachable or unable to audit
# any package), which is printed as a WARNING ... SKIPPED line; 1: unreviewed
# vulnerabilities, listed; 2: the audit itself failed, or the ignore list is malformed.
#
# Environment: AUDIT_SERVICE (pypi | osv; default pypi, PyPI's JSON API), AUDIT_VENV (the
# environment audited; default .venv), AUDIT_IGNORE (the ignore list; default
# scripts/audit-ignore.txt), PIP_AUDIT (a pip-audit command to use instead of the pinned
# one this script installs in .venv/audit-tools, away from the project's own packages so
# that it does not audit itself).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${AUDIT_VENV:-.venv}
SERVICE=${AUDIT_SERVICE:-pypi}
IGNORE=${AUDIT_IGNORE:-scripts/audit-ignore.txt}
PIP_AUDIT_VERSION=2.10.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
  echo "error: no environment at $VENV to audit (run make venv first)" >&2
  exit 2
fi
if [ -z "${PIP_AUDIT:-}" ]; then
  tools="$VENV/audit-tools"
  if [ ! -x "$tools/bin/pip-audit" ]; then
    if ! { "$VENV/bin/python" -m venv "$tools" \
           && "$tools/bin/python" -m pip install --quiet "pip-audit==$PIP_AUDIT_VERSION"; } \
         >"$work/install.log" 2>&1; then
      echo "WARNING: dependency audit SKIPPED: pip-audit $PIP_AUDIT_VERSION could not be" \
           "installed (no package index?):" >&2
      tail -n 3 "$work/install.log" >&2
      rm -rf "$tools"
      exit 0
    fi
  fi
  PIP_AUDIT="$tools/bin/pip-audit"
fi

"$VENV/bin/python" -m pip freeze --all --exclude-editable >"$work/requirements.txt" || exit 2
echo "auditing $(wc -l <"$work/requirements.txt") packages of $VENV with pip-audit" \
     "(service: $SERVICE) ..."
# --no-deps --disable-pip: the frozen list is complete and pinned; nothing is resolved.
$PIP_AUDIT -r "$work/requirements.txt" --no-deps --disable-pip -s "$SERVICE" \
  --progress-spinner off -f json -o "$work/report.json" >"$work/pip-audit.log" 2>&1
rc=$?
"$VENV/bin/python" scripts/audit_check.py "$work/report.json" "$IGNORE" \
  --log "$work/pip-audit.log" --rc "$rc"

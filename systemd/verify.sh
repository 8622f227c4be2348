#!/usr/bin/env bash
# Check systemd/dropzone.service on a development machine: `systemd-analyze verify` must be
# silent about it, and `systemd-analyze security` must rate it at most MAX_EXPOSURE (default
# 1.5, inside systemd's "OK" band, 1.0-4.9; measured 1.3 with systemd 252).
#
# verify checks that ExecStart's program exists, and /opt/dropzone/current/bin/python only
# exists on a server, so a copy of the unit with that program swapped for this machine's
# python3 is verified instead; nothing else in it changes. verify does not look up User=, so
# the missing dropzone user is no error here. Neither command starts the unit.
#
# Exit codes: 0 both pass; 1 verify complained or the score is too high; 2 no systemd-analyze.
set -euo pipefail

unit="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dropzone.service"
max_exposure="${MAX_EXPOSURE:-1.5}"
server_python=/opt/dropzone/current/bin/python

if ! command -v systemd-analyze >/dev/null; then
    echo "verify.sh: systemd-analyze is not installed (Debian: apt install systemd)" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="$(command -v python3 || echo /bin/sh)"
sed "s|^ExecStart=$server_python |ExecStart=$python |" "$unit" >"$work/dropzone.service"

echo "== systemd-analyze verify ($(systemd-analyze --version | head -n 1))"
status=0
verify_output="$(systemd-analyze verify "$work/dropzone.service" 2>&1)" || status=$?
verify_output="${verify_output//$work\/dropzone.service/$unit}"
[ -n "$verify_output" ] && echo "$verify_output"
# verify exits 0 after "Failed to parse ..., ignoring" lines: any line naming the unit fails it.
if [ "$status" -ne 0 ] || grep -q "dropzone.service" <<<"$verify_output"; then
    echo "FAIL: systemd-analyze verify complained about dropzone.service"
    exit 1
fi
echo "verify: ok"

echo "== systemd-analyze security --offline=yes"
report="$(systemd-analyze security --offline=yes "$work/dropzone.service" 2>&1)"
grep -v "✓" <<<"$report" || true
score="$(sed -n 's/.*Overall exposure level for dropzone.service: \([0-9.]*\).*/\1/p' <<<"$report")"
if [ -z "$score" ]; then
    echo "FAIL: no overall exposure level in the report"
    exit 1
fi
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL: exposure $score is above $max_exposure"
    exit 1
fi
echo "exposure: $score (at most $max_exposure): ok"

#!/usr/bin/env bash
# Prints the URI of the Debian mirror this machine's apt is configured with
# for suite $1 (deb822 .sources files first, then one-line .list files).
set -euo pipefail
suite="$1"
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  awk -v suite="$suite" '
    /^[[:space:]]*$/ { if (uri != "" && has) { print uri; exit } uri = ""; has = 0; next }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
    END { if (uri != "" && has) print uri }' "$f" | head -n1
done | head -n1 | grep . && exit 0
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite && $(i-1) !~ /^\[/) { print $(i-1); exit } }' "$f"
done | head -n1

#!/usr/bin/env bash
# Stops what deploy/local/up.sh started, by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${ATOMQ_DATA:-$(pwd)/data}
for f in "$DATA"/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  name=$(basename "$f" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$f"
done

#!/usr/bin/env bash
# Builds atomq, starts a coordinator and three participants on loopback with
# their data under ./data, creates demo queues and commits one transaction
# across all three. Stop them with deploy/local/down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BASE=${ATOMQ_BASE_PORT:-7100}
DATA=${ATOMQ_DATA:-$ROOT/data}
BIN=$ROOT/build/bin

bash deploy/local/build.sh
mkdir -p "$DATA"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

PARTS=""
for i in 1 2 3; do
  PARTS="${PARTS:+$PARTS,}p$i=127.0.0.1:$((BASE + i))"
done

start() {  # name, then the command
  local name=$1; shift
  if running "$DATA/$name.pid"; then
    echo "$name already running (pid $(cat "$DATA/$name.pid"))"
    return
  fi
  nohup "$@" >>"$DATA/$name.log" 2>&1 &
  echo $! >"$DATA/$name.pid"
  echo "started $name (pid $!), log $DATA/$name.log"
}

for i in 1 2 3; do
  start "p$i" "$BIN/atomq-participant" --id="p$i" --plaintext --listen="127.0.0.1:$((BASE + i))" \
    --data_dir="$DATA/p$i"
done
start c1 "$BIN/atomq-coordinator" --id=c1 --plaintext --listen="127.0.0.1:$BASE" --data_dir="$DATA/c1" \
  --participants="$PARTS"

export ATOMQ_PLAINTEXT=1  # the demo cluster speaks plaintext on loopback
CTL="$BIN/atomqctl --rpc_timeout_ms=1000"
wait_up() {  # what, then the probe command
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$what did not come up; see its log in $DATA" >&2
  exit 1
}
for i in 1 2 3; do wait_up "p$i" $CTL --participant="127.0.0.1:$((BASE + i))" queue list; done
wait_up c1 $CTL --coordinator="127.0.0.1:$BASE" txn list

echo
echo "creating demo queues: orders on p1, audit on p2, billing on p3"
for spec in 1:orders 2:audit 3:billing; do
  i=${spec%%:*}; q=${spec#*:}
  $CTL --participant="127.0.0.1:$((BASE + i))" queue create "$q" 2>/dev/null ||
    echo "queue $q on p$i exists already"
done

echo
echo "one atomic enqueue across p1, p2 and p3:"
echo "+ atomqctl --coordinator=127.0.0.1:$BASE txn exec --enqueue=p1:orders=order-42 --enqueue=p2:audit=order-42-created --enqueue=p3:billing=invoice-42"
$CTL --coordinator="127.0.0.1:$BASE" txn exec --enqueue=p1:orders=order-42 \
  --enqueue=p2:audit=order-42-created --enqueue=p3:billing=invoice-42

cat <<MSG

The cluster is up:
  coordinator c1   127.0.0.1:$BASE   data $DATA/c1
  participant p1   127.0.0.1:$((BASE + 1))   data $DATA/p1
  participant p2   127.0.0.1:$((BASE + 2))   data $DATA/p2
  participant p3   127.0.0.1:$((BASE + 3))   data $DATA/p3

Look around:
  $BIN/atomqctl --participant=127.0.0.1:$((BASE + 1)) queue list
  $BIN/atomqctl --participant=127.0.0.1:$((BASE + 2)) queue receive audit
  $BIN/atomqctl --coordinator=127.0.0.1:$BASE txn list --state=in-doubt
  $BIN/atomqctl --coordinator=127.0.0.1:$BASE txn exec --protocol=3pc --enqueue=p1:orders=a --enqueue=p3:billing=b
Stop it: deploy/local/down.sh
MSG

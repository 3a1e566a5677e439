#!/usr/bin/env bash
# An order on p1 and its audit record on p2 in one transaction, with
# atomqctl; then one whose audit queue does not exist, which aborts (exit
# status 1) and enqueues nothing. Against deploy/local/up.sh's cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${ATOMQ_BASE_PORT:-7100}
CTL=${ATOMQCTL:-build/bin/atomqctl}
C1=${ATOMQ_COORDINATOR:-127.0.0.1:$BASE}
ORDER=${1:-42}

$CTL --participant="${ATOMQ_P1:-127.0.0.1:$((BASE + 1))}" queue create orders 2>/dev/null || true
$CTL --participant="${ATOMQ_P2:-127.0.0.1:$((BASE + 2))}" queue create audit 2>/dev/null || true

$CTL --coordinator="$C1" txn exec --enqueue="p1:orders=order-$ORDER" \
  --enqueue="p2:audit=order-$ORDER created"

status=0
$CTL --coordinator="$C1" txn exec --enqueue="p1:orders=order-$ORDER-bis" \
  --enqueue="p2:no-such-queue=order-$ORDER-bis created" || status=$?
echo "exit status $status: aborted, nothing enqueued on p1 either"

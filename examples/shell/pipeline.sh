#!/usr/bin/env bash
# Consume, transform, produce exactly once with atomqctl: each order on p1
# is acked and its invoice enqueued on p3 in one transaction whose id comes
# from the delivery (mv-<sequence>-<lease token>), so running a step twice
# (a lost reply, a crash) moves the order once. Against up.sh's cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${ATOMQ_BASE_PORT:-7100}
CTL=${ATOMQCTL:-build/bin/atomqctl}
C1=${ATOMQ_COORDINATOR:-127.0.0.1:$BASE}
P1=${ATOMQ_P1:-127.0.0.1:$((BASE + 1))}
P3=${ATOMQ_P3:-127.0.0.1:$((BASE + 3))}

$CTL --participant="$P1" queue create orders 2>/dev/null || true
$CTL --participant="$P3" queue create billing 2>/dev/null || true

while :; do
  line=$($CTL --participant="$P1" queue receive orders --no-ack --lease_ms=10000)
  # "QUEUE #SEQ (delivery N, lease TOKEN): PAYLOAD", or "no messages ready in QUEUE"
  [[ $line =~ \#([0-9]+)\ \(delivery\ [0-9]+,\ lease\ ([^\)]+)\):\ (.*)$ ]] || break
  seq=${BASH_REMATCH[1]} token=${BASH_REMATCH[2]} order=${BASH_REMATCH[3]}
  $CTL --coordinator="$C1" txn exec --id="mv-$seq-$token" \
    --ack="p1:orders:$seq:$token" --enqueue="p3:billing=invoice for $order" ||
    echo "not moved (it comes again if its lease ran out)"
done

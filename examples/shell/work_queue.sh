#!/usr/bin/env bash
# The work queue with atomqctl: send tasks to the durable queue `tasks` on
# p1, then work them one at a time, acking each only after its work (a
# message received with --no-ack and never acked is delivered again once
# its lease runs out). Against deploy/local/up.sh's cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${ATOMQ_BASE_PORT:-7100}
P1=${ATOMQ_P1:-127.0.0.1:$((BASE + 1))}
CTL="${ATOMQCTL:-build/bin/atomqctl} --participant=$P1"

$CTL queue create tasks 2>/dev/null || echo "queue tasks exists already"
for task in "first task." "second task.." "third task."; do
  $CTL queue send tasks "$task"
done

# One task at a time: lease it for 30 s, work, then ack with its lease token.
while :; do
  line=$($CTL queue receive tasks --no-ack --lease_ms=30000)
  # "QUEUE #SEQ (delivery N, lease TOKEN): PAYLOAD", or "no messages ready in QUEUE"
  [[ $line =~ \#([0-9]+)\ \(delivery\ [0-9]+,\ lease\ ([^\)]+)\):\ (.*)$ ]] || break
  seq=${BASH_REMATCH[1]} token=${BASH_REMATCH[2]} payload=${BASH_REMATCH[3]}
  echo " [x] Received $payload"
  sleep 0.2  # the work
  $CTL queue ack tasks "$seq" "$token"
  echo " [x] Done"
done

#!/usr/bin/env bash
# Compares atomq with RabbitMQ's atomic multi-queue publish at the same shape:
# CLIENTS closed-loop clients, each transaction putting one PAYLOAD-byte
# persistent message on each of K durable queues (RabbitMQ: tx.select, K
# publishes, tx.commit on one channel; atomq: one Execute with one enqueue on
# each of K participants, via atomq-bench --spawn).
#
# RabbitMQ runs privately for the comparison: loopback only, its own node
# name, ports, epmd and data under a temp dir, stopped by pid on exit.
#
# With --quorum, the replicated comparison: RabbitMQ as a private 3-node
# cluster with K quorum queues (Raft groups of 3, their leaders spread over the
# nodes), each client on one node's port publishing K persistent messages, one
# per queue, on a channel in publisher-confirm mode and waiting for all K acks
# (quorum queues have no tx, so that is K durable publishes, not an atomic
# one); atomq with --replicas=3, the coordinator and each participant a group
# of 3 replicas.
#
# Usage: bench/compare_rabbitmq.sh [--quorum] [--clients=N] [--k=N] [--payload=N]
#          [--duration=S]
#   or the same through CLIENTS, K, PAYLOAD, DURATION (and WARMUP, ATOMQ_BIN)
#   in the environment. Defaults: 64 clients, K=3, 128 bytes, 10 s.
#   ATOMQ_API=stream|unary (default stream): atomq's clients share one
#   ExecuteStream call (as RabbitMQ's channels share one connection each
#   running one transaction at a time), or each makes one Execute call per
#   transaction.
set -euo pipefail

CLIENTS=${CLIENTS:-64}
K=${K:-3}
PAYLOAD=${PAYLOAD:-128}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
ATOMQ_API=${ATOMQ_API:-stream}
QUORUM=""
for arg in "$@"; do
  case $arg in
    --quorum) QUORUM=1 ;;
    --clients=*) CLIENTS=${arg#*=} ;;
    --k=*|--participants=*) K=${arg#*=} ;;
    --payload=*|--payload_bytes=*) PAYLOAD=${arg#*=} ;;
    --duration=*) DURATION=${arg#*=} ;;
    --warmup=*) WARMUP=${arg#*=} ;;
    --api=*) ATOMQ_API=${arg#*=} ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_rabbitmq.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ATOMQ_BIN=${ATOMQ_BIN:-$ROOT/build/bin}
RABBIT=/usr/lib/rabbitmq/bin/rabbitmq-server
RABBITMQCTL=/usr/lib/rabbitmq/bin/rabbitmqctl  # not /usr/sbin's, which su's to the rabbitmq user

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in rabbitmq-server librabbitmq-dev gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi
[ -x "$RABBIT" ] || { echo "compare_rabbitmq.sh: $RABBIT not found" >&2; exit 1; }

if [ ! -x "$ATOMQ_BIN/atomq-bench" ] || [ ! -x "$ATOMQ_BIN/atomq-coordinator" ] ||
   [ ! -x "$ATOMQ_BIN/atomq-participant" ]; then
  echo "building atomq into $ROOT/build"
  ATOMQ_BUILD_JOBS=${ATOMQ_BUILD_JOBS:-1} bash "$ROOT/deploy/local/build.sh"
fi
# Found out now rather than after the minutes RabbitMQ's half takes.
if [ -n "$QUORUM" ] && ! "$ATOMQ_BIN/atomq-bench" --help 2>&1 | grep -q -- --replicas; then
  echo "compare_rabbitmq.sh: $ATOMQ_BIN/atomq-bench has no --replicas; rebuild it" >&2
  exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/atomq-vs-rabbitmq.XXXXXX")
NODES=()       # node i's name, and its ports:
PORTS=()       #   AMQP
DIST_PORTS=()  #   Erlang distribution
RPIDS=()       # node i's launcher, the leader of its own process group
USED_PORTS=""
EPMD_PORT=""
EPMD_PID=""
CTL_PORT=""    # rabbitmqctl's own distribution port (it runs one call at a time)

# A port nobody listens on (the RabbitMQ and epmd ports are not ours to bind
# here, so this is a check, not a reservation), and not one handed out before.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    case " $USED_PORTS " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS="$USED_PORTS $p"
      echo "$p"
      return 0
    fi
  done
  echo "compare_rabbitmq.sh: no free port found" >&2
  return 1
}

# Waits up to $2 tenths of a second for 127.0.0.1:$1 to accept, while pid $3 lives.
await_port() {  # port tenths pid
  for _ in $(seq 1 "$2"); do
    kill -0 "$3" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# NODE_ENV: the environment of node i, for its server and for rabbitmqctl on
# it. Every path and port is private, so a system RabbitMQ (if any) is
# untouched; the shared HOME gives every node and rabbitmqctl the same cookie.
node_env() {  # i
  local d="$TMP/node$1"
  NODE_ENV=(
    HOME="$TMP/home"
    RABBITMQ_NODENAME="${NODES[$1]}"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="${PORTS[$1]}"
    RABBITMQ_DIST_PORT="${DIST_PORTS[$1]}"
    ERL_EPMD_PORT="$EPMD_PORT"
    ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_MNESIA_BASE="$d/mnesia"
    RABBITMQ_LOG_BASE="$d/log"
    RABBITMQ_PID_FILE="$d/rabbitmq.pid"
    RABBITMQ_CONF_ENV_FILE="$TMP/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$TMP/rabbitmq"
    RABBITMQ_ENABLED_PLUGINS_FILE="$TMP/enabled_plugins"
    # Every Erlang VM here listens on loopback only: the server, rabbitmqctl
    # and (ERL_AFLAGS) the short-lived epmd-starter node the server runs.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    ERL_AFLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
    RABBITMQ_CTL_DIST_PORT_MIN="$CTL_PORT"
    RABBITMQ_CTL_DIST_PORT_MAX="$CTL_PORT"
  )
}

start_node() {  # i
  mkdir -p "$TMP/node$1/mnesia" "$TMP/node$1/log"
  echo "starting RabbitMQ ${NODES[$1]} on 127.0.0.1:${PORTS[$1]} (data $TMP/node$1)"
  node_env "$1"
  env "${NODE_ENV[@]}" setsid "$RABBIT" >"$TMP/node$1/rabbitmq.out" 2>&1 </dev/null &
  RPIDS[$1]=$!
}

await_node() {  # i
  if ! await_port "${PORTS[$1]}" 600 "${RPIDS[$1]}"; then
    echo "compare_rabbitmq.sh: RabbitMQ did not come up on 127.0.0.1:${PORTS[$1]} within 60 s:" >&2
    tail -n 30 "$TMP/node$1/rabbitmq.out" >&2 || true
    exit 1
  fi
}

# rabbitmqctl on node i, bounded; its stderr goes to a log shown on failure.
ctl() {  # i args...
  local i=$1
  shift
  node_env "$i"
  if ! timeout --foreground -k 5 120 env "${NODE_ENV[@]}" "$RABBITMQCTL" "$@" \
       2>>"$TMP/rabbitmqctl.log"; then
    echo "compare_rabbitmq.sh: rabbitmqctl $* on ${NODES[$i]} failed:" >&2
    tail -n 20 "$TMP/rabbitmqctl.log" >&2 || true
    return 1
  fi
}

stop_rabbit() {
  local pid
  # The launcher turns SIGTERM into an orderly stop of the Erlang VM; every
  # node at once, as a cluster going down together does not wait on itself.
  for pid in "${RPIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${RPIDS[@]}"; do
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    # Its own process group (setsid above): take any straggler with it.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  RPIDS=()
  if [ -n "$EPMD_PID" ]; then
    kill -TERM "$EPMD_PID" 2>/dev/null || true
    wait "$EPMD_PID" 2>/dev/null || true
    EPMD_PID=""
  fi
}

cleanup() {
  stop_rabbit
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building rabbitmq_tx_bench"
gcc -O2 -Wall -std=c11 -o "$TMP/rabbitmq_tx_bench" "$ROOT/bench/rabbitmq_tx_bench.c" \
  -lrabbitmq -lpthread

if [ -n "$QUORUM" ]; then
  for i in 0 1 2; do NODES[i]="atomqq$((i + 1))-$$@localhost"; done
else
  NODES=("atomqbench$$@localhost")
fi
for i in "${!NODES[@]}"; do
  PORTS[i]=$(free_port)
  DIST_PORTS[i]=$(free_port)
done
EPMD_PORT=$(free_port)
CTL_PORT=$(free_port)
mkdir -p "$TMP/home"
od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$TMP/home/.erlang.cookie"
chmod 400 "$TMP/home/.erlang.cookie"
echo "[]." >"$TMP/enabled_plugins"
: >"$TMP/rabbitmq-env.conf"
: >"$TMP/rabbitmq.conf"

# Our own epmd, on loopback only, so that it is stopped by pid with the rest.
ERL_EPMD_ADDRESS=127.0.0.1 setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 \
  >"$TMP/epmd.out" 2>&1 </dev/null &
EPMD_PID=$!
await_port "$EPMD_PORT" 100 "$EPMD_PID" || {
  echo "compare_rabbitmq.sh: epmd did not come up on 127.0.0.1:$EPMD_PORT:" >&2
  cat "$TMP/epmd.out" >&2
  exit 1
}

# The nodes boot side by side; then 2 and 3 join 1's cluster.
for i in "${!NODES[@]}"; do start_node "$i"; done
for i in "${!NODES[@]}"; do await_node "$i"; done
if [ -n "$QUORUM" ]; then
  for i in 1 2; do
    echo "joining ${NODES[i]} to ${NODES[0]}"
    ctl "$i" stop_app >/dev/null
    ctl "$i" join_cluster "${NODES[0]}" >/dev/null
    ctl "$i" start_app >/dev/null
  done
  ctl 0 await_online_nodes 3 >/dev/null
  RUNNING=$(ctl 0 cluster_status --formatter json |
            sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr ',' ' ')
  read -r -a RUNNING_NODES <<<"$RUNNING"
  if [ ${#RUNNING_NODES[@]} -ne 3 ]; then
    echo "compare_rabbitmq.sh: the cluster reports ${#RUNNING_NODES[@]} running nodes," \
         "not 3: $RUNNING" >&2
    exit 1
  fi
  echo "cluster up: ${RUNNING_NODES[*]}"
fi

echo
if [ -n "$QUORUM" ]; then
  echo "== RabbitMQ, 3 nodes: $K persistent publishes to $K quorum queues; wait for $K" \
       "publisher confirms ($CLIENTS clients over 3 nodes, $PAYLOAD B, ${DURATION}s)"
  MODE=confirm
else
  echo "== RabbitMQ: tx.select; $K persistent publishes to $K durable queues; tx.commit" \
       "($CLIENTS clients, $PAYLOAD B, ${DURATION}s)"
  MODE=tx
fi
RABBIT_PORTS=$(IFS=,; echo "${PORTS[*]}")
RABBIT_OUT=$("$TMP/rabbitmq_tx_bench" 127.0.0.1 "$RABBIT_PORTS" "$CLIENTS" "$K" "$PAYLOAD" \
             "$DURATION" "$WARMUP" "$MODE") || {
  echo "compare_rabbitmq.sh: rabbitmq_tx_bench failed: $RABBIT_OUT" >&2
  exit 1
}
echo "$RABBIT_OUT"
if [ -n "$QUORUM" ]; then
  echo "quorum queues (name, leader, members):"
  ctl 0 list_queues --quiet --no-table-headers name leader members | sed 's/^/  /'
fi
stop_rabbit  # before atomq runs: the two must not share the cores

# atomq once as asked, and without --quorum and with --clients=1 once more
# with reply_at_decision (issue 12's one-client target is set for both).
REPLICAS=()
[ -z "$QUORUM" ] || REPLICAS=(--replicas=3)
run_atomq() {  # json extra-args...
  local json=$1
  shift
  "$ATOMQ_BIN/atomq-bench" --spawn "${REPLICAS[@]}" --participants="$K" --clients="$CLIENTS" \
    --payload_bytes="$PAYLOAD" --duration="$DURATION" --warmup="$WARMUP" --api="$ATOMQ_API" \
    --json="$json" "$@"
}
echo
echo "== atomq: Execute with one enqueue on each of $K participants" \
     "($CLIENTS clients, $PAYLOAD B, ${DURATION}s, --api=$ATOMQ_API${QUORUM:+, --replicas=3})"
run_atomq "$TMP/atomq.json"
if [ -z "$QUORUM" ] && [ "$CLIENTS" -eq 1 ]; then
  echo
  echo "== atomq, the same with --reply_at_decision"
  run_atomq "$TMP/atomq_rad.json" --reply_at_decision
fi

kv() { echo "$RABBIT_OUT" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
json_num() { sed -n "s/.*\"$1\": \([-0-9.e+]*\).*/\1/p" "${2:-$TMP/atomq.json}" | head -n 1; }
json_lat() { sed -n "s/.*\"latency_ms\": {[^}]*\"$1\": \([-0-9.e+]*\).*/\1/p" "${2:-$TMP/atomq.json}"; }

R_TPS=$(kv txn_per_s)
R_P50=$(kv p50_ms)
R_P99=$(kv p99_ms)
A_TPS=$(json_num committed_txn_per_s)
A_P50=$(json_lat p50)
A_P99=$(json_lat p99)
A_CPU=$(json_num server_cpu_s_per_txn)
DISK=$(json_num disk_fsyncs_per_s)
D_P50=""
D_CPU=""
if [ -f "$TMP/atomq_rad.json" ]; then
  D_P50=$(json_lat p50 "$TMP/atomq_rad.json")
  D_CPU=$(json_num server_cpu_s_per_txn "$TMP/atomq_rad.json")
fi

echo
DISK=$(awk -v d="$DISK" 'BEGIN { if (d != "") printf "%.0f", d }')
echo "== comparison: $CLIENTS clients, K=$K, $PAYLOAD B payload, ${DURATION}s" \
     "(disk: ${DISK:-?} serial fsyncs/s)"
R_NAME=rabbitmq
A_NAME="atomq ($ATOMQ_API)"
if [ -n "$QUORUM" ]; then
  R_NAME="rabbitmq quorum, 3 nodes"
  A_NAME="atomq, 3 replicas ($ATOMQ_API)"
fi
awk -v rn="$R_NAME" -v an="$A_NAME" -v rt="$R_TPS" -v r50="$R_P50" -v r99="$R_P99" \
    -v at="$A_TPS" -v a50="$A_P50" -v a99="$A_P99" -v d50="$D_P50" 'BEGIN {
  w = length(an) > 24 ? length(an) : 24
  printf "  %-*s %12s %10s %10s\n", w, "", "txn/s", "p50 ms", "p99 ms"
  printf "  %-*s %12.1f %10.3f %10.3f\n", w, rn, rt, r50, r99
  printf "  %-*s %12.1f %10.3f %10.3f\n", w, an, at, a50, a99
  if (d50 != "") printf "  %-*s %12s %10.3f\n", w, "atomq, reply_at_decision", "", d50
  if (rt > 0) printf "  atomq / rabbitmq throughput: %.2fx\n", at / rt
  if (r99 > 0) printf "  atomq / rabbitmq p99 latency: %.2fx\n", a99 / r99
}'

# Issue 12's targets on this shape (or with --quorum the replicated ones),
# each with how far it is from its goal.
echo
echo "== targets ($CLIENTS clients${QUORUM:+, replicated})"
awk -v q="$QUORUM" -v n="$CLIENTS" -v rt="$R_TPS" -v r50="$R_P50" -v r99="$R_P99" -v at="$A_TPS" \
    -v a50="$A_P50" -v a99="$A_P99" -v acpu="$A_CPU" -v d50="$D_P50" -v dcpu="$D_CPU" '
function check(what, got, want, higher_is_better) {
  ok = higher_is_better ? got >= want : got <= want
  printf "  %-48s %10.3f vs %10.3f  %s", what, got, want, ok ? "met" : "MISSED"
  if (!ok && want > 0) printf " (%.2fx of the goal)", got / want
  printf "\n"
}
BEGIN {
  if (q && n == 1) {
    # The goal is at most one extra group round trip per durable step; the
    # figures are printed, not judged.
    printf "  %-48s %10.3f\n", "p50 ms, atomq with 3 replicas", a50
    printf "  %-48s %10.3f\n", "p50 ms, rabbitmq quorum queues", r50
  } else if (q && n == 64) {
    check("txn/s >= 1.5x rabbitmq quorum", at, 1.5 * rt, 1)
  } else if (n == 1 && !q) {
    if (d50 != "") check("p50 ms, reply_at_decision <= rabbitmq p50", d50, r50, 0)
    check("p50 ms <= 1.5x rabbitmq p50", a50, 1.5 * r50, 0)
    check("server CPU ms/txn <= 0.5", acpu * 1000, 0.5, 0)
    if (dcpu != "") check("server CPU ms/txn, reply_at_decision <= 0.5", dcpu * 1000, 0.5, 0)
  } else if (n == 64 && !q) {
    check("txn/s >= 3x rabbitmq", at, 3 * rt, 1)
    check("txn/s >= 20,000", at, 20000, 1)
    check("p99 ms <= 0.5x rabbitmq p99", a99, 0.5 * r99, 0)
    check("server CPU ms/txn <= 0.07", acpu * 1000, 0.07, 0)
  } else {
    print "  (targets are set for --clients=1 and --clients=64)"
  }
}'

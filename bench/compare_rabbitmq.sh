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
# Usage: bench/compare_rabbitmq.sh [--clients=N] [--k=N] [--payload=N] [--duration=S]
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
for arg in "$@"; do
  case $arg in
    --clients=*) CLIENTS=${arg#*=} ;;
    --k=*|--participants=*) K=${arg#*=} ;;
    --payload=*|--payload_bytes=*) PAYLOAD=${arg#*=} ;;
    --duration=*) DURATION=${arg#*=} ;;
    --warmup=*) WARMUP=${arg#*=} ;;
    --api=*) ATOMQ_API=${arg#*=} ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_rabbitmq.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ATOMQ_BIN=${ATOMQ_BIN:-$ROOT/build/bin}
RABBIT=/usr/lib/rabbitmq/bin/rabbitmq-server

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

TMP=$(mktemp -d "${TMPDIR:-/tmp}/atomq-vs-rabbitmq.XXXXXX")
RPID=""
EPMD_PORT=""

# A port nobody listens on (the RabbitMQ and epmd ports are not ours to bind
# here, so this is a check, not a reservation).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "compare_rabbitmq.sh: no free port found" >&2
  return 1
}

stop_rabbit() {
  if [ -n "$RPID" ] && kill -0 "$RPID" 2>/dev/null; then
    # The launcher turns SIGTERM into an orderly stop of the Erlang VM.
    kill -TERM "$RPID" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$RPID" 2>/dev/null || break
      sleep 0.1
    done
    # Its own process group (setsid below): take any straggler with it.
    kill -KILL -- "-$RPID" 2>/dev/null || true
    wait "$RPID" 2>/dev/null || true
  fi
  RPID=""
  if [ -n "$EPMD_PORT" ]; then
    ERL_EPMD_PORT=$EPMD_PORT epmd -kill >/dev/null 2>&1 || true
    EPMD_PORT=""
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

PORT=$(free_port)
DIST_PORT=$(free_port)
EPMD_PORT=$(free_port)
NODE="atomqbench$$@localhost"
mkdir -p "$TMP/mnesia" "$TMP/log" "$TMP/home"
echo "[]." >"$TMP/enabled_plugins"
: >"$TMP/rabbitmq-env.conf"
: >"$TMP/rabbitmq.conf"

echo "starting RabbitMQ $NODE on 127.0.0.1:$PORT (data $TMP)"
# Every path and port is private, so a system RabbitMQ (if any) is untouched.
HOME="$TMP/home" \
RABBITMQ_NODENAME="$NODE" \
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
RABBITMQ_NODE_PORT="$PORT" \
RABBITMQ_DIST_PORT="$DIST_PORT" \
ERL_EPMD_PORT="$EPMD_PORT" \
ERL_EPMD_ADDRESS=127.0.0.1 \
RABBITMQ_MNESIA_BASE="$TMP/mnesia" \
RABBITMQ_LOG_BASE="$TMP/log" \
RABBITMQ_PID_FILE="$TMP/rabbitmq.pid" \
RABBITMQ_CONF_ENV_FILE="$TMP/rabbitmq-env.conf" \
RABBITMQ_CONFIG_FILE="$TMP/rabbitmq" \
RABBITMQ_ENABLED_PLUGINS_FILE="$TMP/enabled_plugins" \
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
  setsid "$RABBIT" >"$TMP/rabbitmq.out" 2>&1 </dev/null &
RPID=$!

up=""
for _ in $(seq 1 600); do
  if ! kill -0 "$RPID" 2>/dev/null; then break; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "compare_rabbitmq.sh: RabbitMQ did not come up on 127.0.0.1:$PORT within 60 s:" >&2
  tail -n 30 "$TMP/rabbitmq.out" >&2 || true
  exit 1
fi

echo
echo "== RabbitMQ: tx.select; $K persistent publishes to $K durable queues; tx.commit" \
     "($CLIENTS clients, $PAYLOAD B, ${DURATION}s)"
RABBIT_OUT=$("$TMP/rabbitmq_tx_bench" 127.0.0.1 "$PORT" "$CLIENTS" "$K" "$PAYLOAD" \
             "$DURATION" "$WARMUP") || {
  echo "compare_rabbitmq.sh: rabbitmq_tx_bench failed: $RABBIT_OUT" >&2
  exit 1
}
echo "$RABBIT_OUT"
stop_rabbit  # before atomq runs: the two must not share the cores

# atomq once as asked, and with --clients=1 once more with reply_at_decision
# (issue 12's one-client target is set for both).
run_atomq() {  # json extra-args...
  local json=$1
  shift
  "$ATOMQ_BIN/atomq-bench" --spawn --participants="$K" --clients="$CLIENTS" \
    --payload_bytes="$PAYLOAD" --duration="$DURATION" --warmup="$WARMUP" --api="$ATOMQ_API" \
    --json="$json" "$@"
}
echo
echo "== atomq: Execute with one enqueue on each of $K participants" \
     "($CLIENTS clients, $PAYLOAD B, ${DURATION}s, --api=$ATOMQ_API)"
run_atomq "$TMP/atomq.json"
if [ "$CLIENTS" -eq 1 ]; then
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
awk -v api="$ATOMQ_API" -v rt="$R_TPS" -v r50="$R_P50" -v r99="$R_P99" \
    -v at="$A_TPS" -v a50="$A_P50" -v a99="$A_P99" -v d50="$D_P50" 'BEGIN {
  printf "  %-24s %12s %10s %10s\n", "", "txn/s", "p50 ms", "p99 ms"
  printf "  %-24s %12.1f %10.3f %10.3f\n", "rabbitmq", rt, r50, r99
  printf "  %-24s %12.1f %10.3f %10.3f\n", "atomq (" api ")", at, a50, a99
  if (d50 != "") printf "  %-24s %12s %10.3f\n", "atomq, reply_at_decision", "", d50
  if (rt > 0) printf "  atomq / rabbitmq throughput: %.2fx\n", at / rt
  if (r99 > 0) printf "  atomq / rabbitmq p99 latency: %.2fx\n", a99 / r99
}'

# Issue 12's targets on this shape, each with how far it is from its goal.
echo
echo "== targets ($CLIENTS clients)"
awk -v n="$CLIENTS" -v rt="$R_TPS" -v r50="$R_P50" -v r99="$R_P99" -v at="$A_TPS" \
    -v a50="$A_P50" -v a99="$A_P99" -v acpu="$A_CPU" -v d50="$D_P50" -v dcpu="$D_CPU" '
function check(what, got, want, higher_is_better) {
  ok = higher_is_better ? got >= want : got <= want
  printf "  %-48s %10.3f vs %10.3f  %s", what, got, want, ok ? "met" : "MISSED"
  if (!ok && want > 0) printf " (%.2fx of the goal)", got / want
  printf "\n"
}
BEGIN {
  if (n == 1) {
    if (d50 != "") check("p50 ms, reply_at_decision <= rabbitmq p50", d50, r50, 0)
    check("p50 ms <= 1.5x rabbitmq p50", a50, 1.5 * r50, 0)
    check("server CPU ms/txn <= 0.5", acpu * 1000, 0.5, 0)
    if (dcpu != "") check("server CPU ms/txn, reply_at_decision <= 0.5", dcpu * 1000, 0.5, 0)
  } else if (n == 64) {
    check("txn/s >= 3x rabbitmq", at, 3 * rt, 1)
    check("txn/s >= 20,000", at, 20000, 1)
    check("p99 ms <= 0.5x rabbitmq p99", a99, 0.5 * r99, 0)
    check("server CPU ms/txn <= 0.07", acpu * 1000, 0.07, 0)
  } else {
    print "  (targets are set for --clients=1 and --clients=64)"
  }
}'

#!/usr/bin/env bash
# Sweeps atomq-bench --spawn one dimension at a time around the default point
# (clients=64, participants=3, payload=128 B):
#   clients       1 4 16 64 256
#   participants  1 2 3 5 8
#   payload       128 1024 16384 65536
# and writes OUT/sweep.csv, each run's JSON under OUT/json/, and PNG charts
# (throughput and latency per dimension, fsyncs and CPU per transaction).
#
# Usage: bench/sweep.sh [OUT_DIR]   (default bench/results)
#   env: DURATION (10), WARMUP (1), PROTOCOL (2pc), ATOMQ_BIN (build/bin),
#        EXTRA (more atomq-bench flags, e.g. "--ops_per_txn=4")
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/bench/results}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PROTOCOL=${PROTOCOL:-2pc}
ATOMQ_BIN=${ATOMQ_BIN:-$ROOT/build/bin}
EXTRA=${EXTRA:-}
case ${1:-} in -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

DEF_CLIENTS=64
DEF_PARTS=3
DEF_PAYLOAD=128
SWEEP_CLIENTS="1 4 16 64 256"
SWEEP_PARTS="1 2 3 5 8"
SWEEP_PAYLOAD="128 1024 16384 65536"

if ! command -v gnuplot >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing gnuplot-nox"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gnuplot-nox
fi
if [ ! -x "$ATOMQ_BIN/atomq-bench" ] || [ ! -x "$ATOMQ_BIN/atomq-coordinator" ] ||
   [ ! -x "$ATOMQ_BIN/atomq-participant" ]; then
  echo "building atomq into $ROOT/build"
  ATOMQ_BUILD_JOBS=${ATOMQ_BUILD_JOBS:-1} bash "$ROOT/deploy/local/build.sh"
fi

mkdir -p "$OUT/json"
CSV=$OUT/sweep.csv
COLS="dimension,clients,participants,payload_bytes,committed_txn_per_s,aborted_txn_per_s"
COLS+=",errors,p50_ms,p99_ms,p999_ms,max_ms,fsyncs_per_committed_txn"
COLS+=",server_cpu_ms_per_txn,bench_cpu_ms_per_txn,disk_fsyncs_per_s"
COLS+=",txn_per_s_per_disk_fsync_per_s"
echo "$COLS" >"$CSV"

declare -A MEASURED  # JSON files written by this sweep

# One figure from a run's JSON (atomq-bench writes one "key": value per line).
num() { sed -n "s/^  \"$2\": \([-0-9.e+]*\),\{0,1\}$/\1/p" "$1" | head -n 1; }
lat() { sed -n "s/.*\"latency_ms\": {[^}]*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1"; }
ms() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { printf "%.6g", v * 1000 }'; }

run_point() {  # dimension clients participants payload
  local dim=$1 c=$2 p=$3 s=$4
  local json=$OUT/json/c${c}-p${p}-s${s}.json
  # The default point sits on every axis: measure it once.
  if [ -z "${MEASURED[$json]:-}" ]; then
    MEASURED[$json]=1
    rm -f "$json"
    echo "== $dim: clients=$c participants=$p payload=$s" >&2
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    if ! "$ATOMQ_BIN/atomq-bench" --spawn --clients="$c" --participants="$p" \
        --payload_bytes="$s" --duration="$DURATION" --warmup="$WARMUP" \
        --protocol="$PROTOCOL" --json="$json" $EXTRA >"$OUT/json/c${c}-p${p}-s${s}.txt"; then
      echo "   failed; see $OUT/json/c${c}-p${p}-s${s}.txt" >&2
    fi
    sed -n '2,5p' "$OUT/json/c${c}-p${p}-s${s}.txt" >&2 || true
  fi
  if [ ! -s "$json" ]; then
    echo "$dim,$c,$p,$s,,,,,,,,,,,," >>"$CSV"
    return
  fi
  echo "$dim,$c,$p,$s,$(num "$json" committed_txn_per_s),$(num "$json" aborted_txn_per_s)`
       `,$(num "$json" errors),$(lat "$json" p50),$(lat "$json" p99),$(lat "$json" p999)`
       `,$(lat "$json" max),$(num "$json" fsyncs_per_committed_txn)`
       `,$(ms "$(num "$json" server_cpu_s_per_txn)"),$(ms "$(num "$json" bench_cpu_s_per_txn)")`
       `,$(num "$json" disk_fsyncs_per_s),$(num "$json" txn_per_s_per_disk_fsync_per_s)" >>"$CSV"
}

for c in $SWEEP_CLIENTS; do run_point clients "$c" $DEF_PARTS $DEF_PAYLOAD; done
for p in $SWEEP_PARTS; do run_point participants $DEF_CLIENTS "$p" $DEF_PAYLOAD; done
for s in $SWEEP_PAYLOAD; do run_point payload $DEF_CLIENTS $DEF_PARTS "$s"; done
echo "wrote $CSV"

# Charts: one data file per dimension (x, then the CSV's figures).
plot() {  # dimension, x column, x label, log x?
  local dim=$1 xcol=$2 xlabel=$3 logx=$4
  local dat=$OUT/$dim.dat
  awk -F, -v d="$dim" -v x="$xcol" 'NR > 1 && $1 == d && $5 != "" {
    print $x, $5, $8, $9, $10, $12, $13 }' "$CSV" >"$dat"
  [ -s "$dat" ] || return 0
  gnuplot <<GP
set terminal png size 900,560
set datafile separator " "
set grid
set key top left
set xlabel "$xlabel"
$( [ "$logx" = 1 ] && echo "set logscale x 2" )
set output "$OUT/$dim-throughput-latency.png"
set title "atomq $PROTOCOL: throughput and latency vs $xlabel (others at clients=$DEF_CLIENTS, participants=$DEF_PARTS, payload=$DEF_PAYLOAD B)" noenhanced
set ylabel "committed txn/s"
set y2label "latency ms"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot "$dat" using 1:2 with linespoints lw 2 title "txn/s" axes x1y1, \
     "" using 1:3 with linespoints title "p50 ms" axes x1y2, \
     "" using 1:4 with linespoints title "p99 ms" axes x1y2, \
     "" using 1:5 with linespoints title "p99.9 ms" axes x1y2
set output "$OUT/$dim-fsyncs-cpu.png"
set title "atomq $PROTOCOL: fsyncs and server CPU per transaction vs $xlabel" noenhanced
set ylabel "fsyncs / committed txn"
set y2label "server CPU ms / txn"
plot "$dat" using 1:6 with linespoints lw 2 title "fsyncs/txn" axes x1y1, \
     "" using 1:7 with linespoints title "server CPU ms/txn" axes x1y2
GP
  echo "wrote $OUT/$dim-throughput-latency.png, $OUT/$dim-fsyncs-cpu.png"
}
plot clients 2 "clients" 1
plot participants 3 "participants" 0
plot payload 4 "payload bytes" 1

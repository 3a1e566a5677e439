#!/usr/bin/env bash
# Builds atomq, starts a coordinator and three participants on loopback with
# their data under ./data, creates demo queues and commits one transaction
# across all three. Every link speaks mTLS (--tls_client_auth=require): on
# its first run it makes a local CA and certificates with openssl in
# ./data/tls. With ATOMQ_REPLICAS=3 each participant is a group of three
# replicas (docs/design.md 10.2): replica j of pI serves clients on
# BASE+10*I+j and replicates on BASE+100+10*I+j, and the coordinator c1 is a
# group too: replica j serves on BASE+40+j and replicates on BASE+140+j.
# Stop them with deploy/local/down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BASE=${ATOMQ_BASE_PORT:-7100}
DATA=${ATOMQ_DATA:-$ROOT/data}
BIN=$ROOT/build/bin
REPLICAS=${ATOMQ_REPLICAS:-1}
case "$REPLICAS" in
  1 | 3 | 5) ;;
  *) echo "ATOMQ_REPLICAS must be 1, 3 or 5" >&2; exit 2 ;;
esac

bash deploy/local/build.sh
mkdir -p "$DATA"
TLS=$DATA/tls

# A local CA (ca.pem), and a certificate and key for each server and for a
# client ("client"), made once: later runs reuse them, so a restarted cluster
# keeps trusting its clients. Certificates name 127.0.0.1 and the node's id.
make_certificates() {
  [ -f "$TLS/ca.pem" ] && return
  echo "making a local CA and certificates in $TLS (first run)"
  mkdir -p "$TLS"
  chmod 700 "$TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=atomq local CA" \
    -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
  for name in c1 p1 p2 p3 client; do
    local san="DNS:$name"
    # The first SAN is the identity roles name (docs/design.md section 11).
    [ "$name" = client ] || san="DNS:$name,IP:127.0.0.1,DNS:localhost"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" \
      -keyout "$TLS/$name.key" -out "$TLS/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "$san" >"$TLS/$name.ext"
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
      -CAcreateserial -days 825 -extfile "$TLS/$name.ext" -out "$TLS/$name.pem" 2>/dev/null
    rm -f "$TLS/$name.csr" "$TLS/$name.ext"
  done
  chmod 600 "$TLS"/*.key
}
make_certificates
tls_flags() {  # TLS_FLAGS: the TLS flags of server $1
  TLS_FLAGS=(--tls_cert="$TLS/$1.pem" --tls_key="$TLS/$1.key" --tls_ca="$TLS/ca.pem"
             --tls_client_auth=require)
}
# Who may call what (README "Who may do what"): the servers are peers, the
# demo's client certificate may do everything else. Written once; edit it to
# add identities, and restart.
ROLES="$DATA/roles"
if [ ! -f "$ROLES" ]; then
  mkdir -p "$DATA"
  printf '%s\n' "# identity roles [queue globs]" "c1 peer" "p1 peer" "p2 peer" "p3 peer" \
    "client producer,consumer,operator" >"$ROLES"
  chmod 600 "$ROLES"
fi
# The web console's sign-in (README "The web console"): one operator token,
# made once, for identity "admin".
TOKENS="$DATA/tokens"
if [ ! -f "$TOKENS" ]; then
  printf 'admin %s\n' "$(openssl rand -hex 20)" >"$TOKENS"
  chmod 600 "$TOKENS"
fi
grep -q '^admin ' "$ROLES" || echo "admin producer,consumer,operator" >>"$ROLES"
ROLES_FLAGS=(--roles_file="$ROLES" --tokens_file="$TOKENS")
# Every server serves its console (HTTPS, its own certificate) on its client
# port + 200.
console_flag() { echo "--http_listen=127.0.0.1:$(($1 + 200))"; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Where clients reach participant $1: its address, or its replicas' (a|b|c).
address_of() {
  if [ "$REPLICAS" = 1 ]; then echo "127.0.0.1:$((BASE + $1))"; return; fi
  local out="" j
  for j in $(seq 1 "$REPLICAS"); do out="${out:+$out|}127.0.0.1:$((BASE + 10 * $1 + j))"; done
  echo "$out"
}
# Where participants and clients reach the coordinator.
if [ "$REPLICAS" = 1 ]; then
  COORD="127.0.0.1:$BASE"
else
  COORD=""
  for j in $(seq 1 "$REPLICAS"); do COORD="${COORD:+$COORD|}127.0.0.1:$((BASE + 40 + j))"; done
fi
PARTS=""
for i in 1 2 3; do
  PARTS="${PARTS:+$PARTS,}p$i=$(address_of "$i")"
done

# --group of replicas serving on $1+j and replicating on $1+100+j.
group_of() {
  local out="" j
  for j in $(seq 1 "$REPLICAS"); do
    out="${out:+$out,}$j=127.0.0.1:$(($1 + j))/127.0.0.1:$(($1 + 100 + j))"
  done
  echo "$out"
}

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
  peers=""
  for j in 1 2 3; do
    [ "$j" = "$i" ] || peers="${peers:+$peers,}p$j=$(address_of "$j")"
  done
  tls_flags "p$i"
  common=(--id="p$i" --coordinators="c1=$COORD" --peers="$peers"
          "${TLS_FLAGS[@]}" "${ROLES_FLAGS[@]}")
  if [ "$REPLICAS" = 1 ]; then
    start "p$i" "$BIN/atomq-participant" --listen="127.0.0.1:$((BASE + i))" \
      --data_dir="$DATA/p$i" "$(console_flag $((BASE + i)))" "${common[@]}"
    continue
  fi
  group=$(group_of $((BASE + 10 * i)))
  for j in $(seq 1 "$REPLICAS"); do
    start "p$i-r$j" "$BIN/atomq-participant" --listen="127.0.0.1:$((BASE + 10 * i + j))" \
      --data_dir="$DATA/p$i-r$j" --group="$group" --member_id="$j" \
      "$(console_flag $((BASE + 10 * i + j)))" "${common[@]}"
  done
done
tls_flags c1
if [ "$REPLICAS" = 1 ]; then
  start c1 "$BIN/atomq-coordinator" --id=c1 --listen="127.0.0.1:$BASE" --data_dir="$DATA/c1" \
    --participants="$PARTS" "$(console_flag "$BASE")" "${TLS_FLAGS[@]}" "${ROLES_FLAGS[@]}"
else
  group=$(group_of $((BASE + 40)))
  for j in $(seq 1 "$REPLICAS"); do
    start "c1-r$j" "$BIN/atomq-coordinator" --id=c1 --listen="127.0.0.1:$((BASE + 40 + j))" \
      --data_dir="$DATA/c1-r$j" --group="$group" --member_id="$j" --participants="$PARTS" \
      "$(console_flag $((BASE + 40 + j)))" "${TLS_FLAGS[@]}" "${ROLES_FLAGS[@]}"
  done
fi

# atomqctl (and atomq-bench) take their certificates from the environment.
export ATOMQ_TLS_CA=$TLS/ca.pem ATOMQ_TLS_CERT=$TLS/client.pem ATOMQ_TLS_KEY=$TLS/client.key
unset ATOMQ_PLAINTEXT
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
for i in 1 2 3; do wait_up "p$i" $CTL --participant="$(address_of "$i")" queue list; done
wait_up c1 $CTL --coordinator="$COORD" txn list

echo
echo "creating demo queues: orders on p1, audit on p2, billing on p3"
for spec in 1:orders 2:audit 3:billing; do
  i=${spec%%:*}; q=${spec#*:}
  $CTL --participant="$(address_of "$i")" queue create "$q" 2>/dev/null ||
    echo "queue $q on p$i exists already"
done

echo
echo "one atomic enqueue across p1, p2 and p3:"
echo "+ atomqctl --coordinator='$COORD' txn exec --enqueue=p1:orders=order-42 --enqueue=p2:audit=order-42-created --enqueue=p3:billing=invoice-42"
$CTL --coordinator="$COORD" txn exec --enqueue=p1:orders=order-42 \
  --enqueue=p2:audit=order-42-created --enqueue=p3:billing=invoice-42

if [ "$REPLICAS" = 1 ]; then
  CONSOLE="https://127.0.0.1:$((BASE + 200))/"
else
  CONSOLE="https://127.0.0.1:$((BASE + 241))/ (or any member's client port + 200)"
fi
if [ "$REPLICAS" = 1 ]; then
  P1=127.0.0.1:$((BASE + 1)) P2=127.0.0.1:$((BASE + 2)) P3=127.0.0.1:$((BASE + 3))
  C1=$COORD C1DATA=$DATA/c1
else
  C1="'$COORD'" C1DATA="$DATA/c1-r*"
  P1="'$(address_of 1)'" P2="'$(address_of 2)'" P3="'$(address_of 3)'"
  status_of() {  # what, then the first peer port minus one
    local members="" j
    for j in $(seq 1 "$REPLICAS"); do members="${members:+$members|}127.0.0.1:$(($2 + j))"; done
    echo
    echo "$1's replicas:"
    echo "+ atomqctl cluster status --members='$members'"
    $CTL cluster status --members="$members"
  }
  status_of p1 $((BASE + 110))
  status_of "the coordinator" $((BASE + 140))
  every="p1=$(address_of 1),p2=$(address_of 2),p3=$(address_of 3)"
  echo
  echo "every group at once, asked at the members' client addresses:"
  echo "+ atomqctl --coordinator='$COORD' --participants='$every' cluster status"
  $CTL --coordinator="$COORD" --participants="$every" cluster status
fi

cat <<MSG

The cluster is up, speaking mTLS on every link (certificates in $TLS):
  coordinator c1   $C1   data $C1DATA
  participant p1   $P1
  participant p2   $P2
  participant p3   $P3
  (data in $DATA, one directory per process)

Web console: $CONSOLE
  sign in with the token in $TOKENS (identity admin: $(cut -d' ' -f2 "$TOKENS"))
  its certificate is signed by the local CA $TLS/ca.pem: import it in the browser, or accept
  the warning once. Each participant serves its own on its port + 200.

atomqctl needs the client certificate; in your shell:
  export ATOMQ_TLS_CA=$TLS/ca.pem
  export ATOMQ_TLS_CERT=$TLS/client.pem
  export ATOMQ_TLS_KEY=$TLS/client.key
(the Python client: atomq.Client(..., tls=atomq.TLS(ca="$TLS/ca.pem",
 cert="$TLS/client.pem", key="$TLS/client.key")))

Look around:
  $BIN/atomqctl --participant=$P1 queue list
  $BIN/atomqctl --participant=$P2 queue receive audit
  $BIN/atomqctl --coordinator=$C1 txn list --state=in-doubt
  $BIN/atomqctl --coordinator=$C1 txn exec --protocol=3pc --enqueue=p1:orders=a --enqueue=p3:billing=b
Stop it: deploy/local/down.sh
MSG

#!/usr/bin/env bash
# Checks deploy/systemd: systemd-analyze verify finds nothing to say, the
# hardening is all there, every flag exists in the binary's --help, every
# variable is in atomq.env.example, and the sysusers file makes the user.
# Usage: systemd_test.sh BIN_DIR (atomq-coordinator, atomq-participant)
set -uo pipefail
bin=${1:?BIN_DIR}
src=$(cd "$(dirname "$0")/../../deploy/systemd" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { passes=$((passes + 1)); }

units=(atomq-coordinator.service atomq-participant@.service)
for u in "${units[@]}"; do
  # verify needs ExecStart's binary to exist: point it at the built ones.
  sed "s#/usr/local/bin/#$bin/#" "$src/$u" >"$tmp/$u"
done
# A template is verified as an instance; any output (an unknown key, a
# bad value) counts as a failure, since verify exits 0 on those.
out=$(systemd-analyze verify --man=no "$tmp/atomq-coordinator.service" \
  "$tmp/atomq-participant@p1.service" 2>&1)
rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then fail "systemd-analyze verify (rc=$rc): $out"; else pass; fi

required=(NoNewPrivileges=yes CapabilityBoundingSet= ProtectSystem=strict ProtectHome=yes
  PrivateTmp=yes "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" Restart=on-failure
  User=atomq StateDirectoryMode=0700)
for u in "${units[@]}"; do
  for d in "${required[@]}"; do
    grep -qxF -- "$d" "$src/$u" && pass || fail "$u lacks '$d'"
  done
  for k in RestartSec TimeoutStopSec StateDirectory EnvironmentFile; do
    grep -qE "^$k=.+" "$src/$u" && pass || fail "$u lacks $k="
  done
  n=$(sed -n 's/^LimitNOFILE=//p' "$src/$u")
  [ "${n:-0}" -ge 65536 ] 2>/dev/null && pass || fail "$u: LimitNOFILE '$n' below 65536"
  # ExecStart with its continuation lines, as one line.
  exec=$(sed -n '/^ExecStart=/,/[^\\]$/p' "$src/$u" | tr -d '\\\n')
  binary=$(echo "$exec" | sed -E 's#^ExecStart=/usr/local/bin/([^ ]+).*#\1#')
  help=$("$bin/$binary" --help 2>&1)
  state=$(sed -n 's/^StateDirectory=//p' "$src/$u")
  echo "$exec" | grep -qF -- "--data_dir=/var/lib/$state " && pass ||
    fail "$u: --data_dir is not /var/lib/$state (StateDirectory)"
  for flag in $(echo "$exec" | grep -oE -- '--[a-z_]+' | sort -u); do
    grep -qE -- "^ +$flag( |$)" <<<"$help" && pass || fail "$u: $binary has no $flag"
  done
  for v in $(echo "$exec" | grep -oE '\$\{?[A-Z_]+' | tr -d '${' | sort -u); do
    grep -qE "^#?$v=" "$src/atomq.env.example" && pass || fail "$u: \$$v not in atomq.env.example"
  done
  systemd-analyze security --offline=yes "$tmp/${u/@/@p1}" >"$tmp/security" 2>&1
  score=$(sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p' "$tmp/security")
  awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }' && pass ||
    fail "$u: systemd-analyze security exposure ${score:-unknown} above 2.0"
done

# The flags the example hands over in ATOMQ_FLAGS exist too.
all_help=$("$bin/atomq-coordinator" --help 2>&1; "$bin/atomq-participant" --help 2>&1)
for flag in $(grep -E '^#?ATOMQ_FLAGS=' "$src/atomq.env.example" | grep -oE -- '--[a-z_]+' | sort -u); do
  grep -qE -- "^ +$flag( |$)" <<<"$all_help" && pass || fail "atomq.env.example: no such flag $flag"
done

# sysusers: the user the units name is made, with no login shell.
mkdir -p "$tmp/root/etc"
touch "$tmp/root/etc/"{passwd,group,shadow,gshadow}
systemd-sysusers --root="$tmp/root" "$src/atomq.sysusers.conf" >/dev/null 2>&1
grep -qE '^atomq:x:[0-9]+:[0-9]+:.*:/usr/sbin/nologin$' "$tmp/root/etc/passwd" && pass ||
  fail "atomq.sysusers.conf does not make user atomq"

echo "systemd: $passes passed, $fails failed"
[ $fails -eq 0 ] && [ $passes -gt 0 ]

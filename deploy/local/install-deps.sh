#!/usr/bin/env bash
# Installs the Debian packages atomq builds with, if any is missing.
set -euo pipefail
PKGS=(cmake ninja-build g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
      protobuf-compiler liblmdb-dev libabsl-dev libgtest-dev libgmock-dev libcli11-dev libcpp-httplib-dev libssl-dev
      libjemalloc-dev python3 python3-grpcio python3-protobuf python3-pytest python3-venv
      python3-setuptools openssl systemd python3-yaml chromium chromium-driver python3-selenium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  "${APT[@]}" update -q
  "${APT[@]}" install -y -q "${missing[@]}"
fi

# promtool and prometheus for tests/deploy's monitoring tests: Debian's
# prometheus package unpacked into /opt/atomq-tools, not installed (on a
# systemd host installing it would start a Prometheus server and, by its
# recommends, an exporter).
TOOLS=/opt/atomq-tools/prometheus
if [ ! -x "$TOOLS/usr/bin/promtool" ]; then
  tmp=$(mktemp -d)
  chmod 777 "$tmp"
  (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) ||
    { "${APT[@]}" update -q && (cd "$tmp" && apt-get download -q prometheus); }
  $SUDO mkdir -p "$TOOLS"
  $SUDO dpkg-deb -x "$tmp"/prometheus_*.deb "$TOOLS"
  rm -rf "$tmp"
fi

# The consensus engine: C-Raft 0.22.1 or later (raft_step). Debian 13 has it;
# Debian 12 has it in its backports suite, enabled here from the mirror this
# machine is already configured with.
pkg-config --atleast-version=0.22.1 raft 2>/dev/null && exit 0
candidate=$(apt-cache policy libraft-dev 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] &&
   dpkg --compare-versions "$candidate" ge 0.22.1; then
  "${APT[@]}" install -y -q libraft-dev
  exit 0
fi
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=$(bash "$(dirname "$0")/debian-mirror.sh" "$codename")
if [ -z "$mirror" ]; then
  echo "no Debian mirror for $codename found in /etc/apt; cannot enable $codename-backports" >&2
  exit 1
fi
echo "enabling $codename-backports from $mirror for libraft-dev"
printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$mirror" "$codename" | $SUDO tee /etc/apt/sources.list.d/atomq-backports.sources >/dev/null
"${APT[@]}" update -q
"${APT[@]}" install -y -q -t "$codename-backports" libraft-dev

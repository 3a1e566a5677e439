#!/usr/bin/env bash
# Installs the Debian packages atomq builds with, if any is missing.
set -euo pipefail
PKGS=(cmake ninja-build g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
      protobuf-compiler liblmdb-dev libabsl-dev libgtest-dev libgmock-dev libcli11-dev libcpp-httplib-dev
      libjemalloc-dev python3 python3-grpcio python3-protobuf python3-pytest python3-venv
      python3-setuptools openssl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"

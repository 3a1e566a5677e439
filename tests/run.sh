#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/build.sh
cd build
ctest --output-on-failure -j2 --timeout 900 "$@"

#!/usr/bin/env bash
# Configures and builds atomq into ./build (binaries in build/bin).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"${ATOMQ_BUILD_JOBS:-2}"

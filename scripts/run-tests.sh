#!/usr/bin/env bash
# The whole test suite: set up and build, then run every test (ctest label cpu; the cuda
# label's tests skip themselves on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd build
ctest -j"$(nproc)" --output-on-failure --timeout 900

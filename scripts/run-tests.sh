#!/usr/bin/env bash
# The whole test suite: set up and build, then run every test (ctest label cpu; the cuda
# label's tests skip themselves on a machine without a GPU), then the ASan + UBSan share.
set -euo pipefail
cd "$(dirname "$0")/.."
# CUDA code compiles for the one architecture the project's GPUs have (sm_90: H100, H200):
# half the nvcc time of the default "80;90", which keeps the whole run under 15 minutes on the
# 2-core machine. HEADROOM_CMAKE_ARGS set by the caller wins.
HEADROOM_CMAKE_ARGS="${HEADROOM_CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90}" bash scripts/setup.sh
# HEADROOM_REQUIRE_CHROMIUM=1: the timeline's browser test fails instead of skipping when
# Chromium is missing (setup.sh installs it), so a broken install cannot pass unnoticed.
(cd build && HEADROOM_REQUIRE_CHROMIUM=1 ctest -j"$(nproc)" --output-on-failure --timeout 900)
# The sanitizers' CI share: the library, test_engine, test_autograd, test_nn and the fuzz
# replays under ASan + UBSan (docs/sanitizers.md; the whole suite: bash scripts/sanitize.sh).
bash scripts/sanitize.sh --ci-subset

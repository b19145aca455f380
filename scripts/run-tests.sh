#!/usr/bin/env bash
# The whole test suite: set up and build, then run every test (ctest label cpu; the cuda
# label's tests skip themselves on a machine without a GPU), then the ASan + UBSan share.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
(cd build && ctest -j"$(nproc)" --output-on-failure --timeout 900)
# The sanitizers' CI share: the library, test_engine, test_autograd, test_nn and the fuzz
# replays under ASan + UBSan (docs/sanitizers.md; the whole suite: bash scripts/sanitize.sh).
bash scripts/sanitize.sh --ci-subset

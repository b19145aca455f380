#!/usr/bin/env bash
# Installs what headroom needs (Debian 12 packages only) and builds it in Release into build/.
# Safe to run again: packages already present are not reinstalled, the build is incremental.
# Usage: scripts/setup.sh   (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium and fonts-dejavu-core: the memory timeline's test renders the page in headless
# Chromium (tests/report/memory_report_test.cpp; without recommends there may be no font to draw
# its text with). They add about 350 MB and half a minute to a fresh install.
packages=(g++ cmake ninja-build pkg-config libgtest-dev libbenchmark-dev libopenblas-dev zlib1g-dev
          dataset-fashion-mnist fortunes libopenmpi-dev openmpi-bin chromium fonts-dejavu-core
          python3-torch clang-format)
# python3-torch: Debian's PyTorch 1.13, the CPU reference beside headroom (bench/cpu_side_by_side.py).
# clang-format: the ctest `format` checks that the code follows .clang-format.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${HEADROOM_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)"

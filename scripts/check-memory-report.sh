#!/usr/bin/env bash
# Writes a memory report and renders its timeline: the visual check of report/memory_report.
#   1. installs Chromium (Debian package) if it is missing, to render HTML without a display;
#   2. builds memory_report_demo and test_report;
#   3. runs memory_report_demo (a short traced MLP run) which writes stats.json, snapshot.json,
#      trace.json, trace.chrome.json and timeline.html, and checks that the JSON files parse;
#   4. runs the MemoryReport tests (they render a timeline in headless Chromium too);
#   5. renders timeline.html headless to timeline.png and prints where everything is.
# Usage: scripts/check-memory-report.sh [OUT_DIR]   (default: $BUILD/memory-report)
#   HEADROOM_BUILD_DIR picks the build directory (default: build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${HEADROOM_BUILD_DIR:-build}
OUT=${1:-$BUILD/memory-report}
CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
  echo "check-memory-report: installing chromium (a large package, once)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # fonts-dejavu-core: without recommends there may be no font to draw the text with.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${HEADROOM_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" --target memory_report_demo test_report

rm -rf "$OUT"
"$BUILD/bench/memory_report_demo" "$OUT"
for f in stats.json snapshot.json trace.json trace.chrome.json; do
  if command -v python3 >/dev/null; then
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$OUT/$f" || { echo "check-memory-report: $OUT/$f is not valid JSON" >&2; exit 1; }
  fi
done

"$BUILD/tests/test_report" --gtest_filter='MemoryReport.*' --gtest_brief=1

# A fresh profile directory per run: Chromium will not share one between processes.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
page="file://$(realpath "$OUT/timeline.html")"
png="$(realpath "$OUT")/timeline.png"
timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --disable-dev-shm-usage \
  --hide-scrollbars --window-size=1200,900 --user-data-dir="$profile" --screenshot="$png" "$page" >/dev/null 2>&1
size=$(stat -c %s "$png" 2>/dev/null || echo 0)
if [ "$size" -lt 10240 ]; then
  echo "check-memory-report: the screenshot $png is missing or blank ($size bytes)" >&2
  exit 1
fi

echo
echo "memory report in $(realpath "$OUT"):"
ls -l "$OUT" | tail -n +2
echo
echo "timeline rendered to $png ($size bytes)"
echo "open $OUT/timeline.html in any browser; load $OUT/trace.chrome.json at https://ui.perfetto.dev (Open trace file)"

#!/usr/bin/env bash
# Fuzzes headroom's file readers with libFuzzer (tests/fuzz/README.md):
#   1. installs clang-14 and its fuzzer runtime (Debian packages) if they are missing;
#   2. configures build-fuzz/ with clang, the library built with ASan + UBSan (UBSan errors are
#      fatal) and libFuzzer's coverage, and builds fuzz_<name> for every tests/fuzz/<name>_fuzz.cpp;
#   3. runs each target in turn for SECONDS over a working copy of its seed corpus plus its
#      regression corpus (new inputs go to build-fuzz/corpus/<name>/, never into the source tree;
#      crashing inputs to build-fuzz/artifacts/<name>/);
#   4. prints executions, executions per second and crashes per target, and exits 1 on any crash.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 300 seconds, every target)
#   FUZZ_JOBS: cores for the build (default: all); extra libFuzzer flags in FUZZ_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-300}
shift || true
BUILD=build-fuzz
CXX_BIN=clang++-14

if ! command -v "$CXX_BIN" >/dev/null || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz: installing clang-14 and libclang-rt-14-dev"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null
fi

# Every target CMake will build: tests/fuzz/<name>_fuzz.cpp.
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/*_fuzz.cpp; do
    n=$(basename "$f" .cpp)
    targets+=("${n%_fuzz}")
  done
fi

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="$CXX_BIN" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DHEADROOM_CUDA=OFF -DHEADROOM_FUZZ=ON -DHEADROOM_BUILD_BENCH=OFF >/dev/null
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
cmake --build "$BUILD" -j"${FUZZ_JOBS:-$(nproc)}" --target "${build_targets[@]}"

export HEADROOM_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

summary=()
failed=0
for t in "${targets[@]}"; do
  work="$BUILD/corpus/$t"
  artifacts="$BUILD/artifacts/$t"
  log="$BUILD/fuzz-$t.log"
  mkdir -p "$work" "$artifacts"
  dirs=("$work" "tests/fuzz/corpus/$t")
  [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
  before=$(find "$artifacts" -type f | wc -l)
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s (log: $log)"
  set +e
  # shellcheck disable=SC2086
  "$BUILD/tests/fuzz/fuzz_$t" "${dirs[@]}" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" -timeout=25 -rss_limit_mb=2048 ${FUZZ_FLAGS:-} >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(( $(find "$artifacts" -type f | wc -l) - before ))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi  # a crash that wrote no artifact
  [ "$crashes" -gt 0 ] && failed=1
  summary+=("$(printf '%-12s %8ss %12s %10s %8s %8s' "$t" "$SECONDS_PER_TARGET" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$crashes")")
  if [ "$crashes" -gt 0 ]; then
    echo "fuzz: $t: finding(s) in $artifacts (reproduce: $BUILD/tests/fuzz/fuzz_$t FILE); the report:"
    grep -E "ERROR|runtime error|fuzz finding|fuzz invariant|deadly signal|SUMMARY" "$log" | head -8
  fi
done

echo
printf '%-12s %9s %12s %10s %8s %8s\n' target time executions exec/s cov crashes
for line in "${summary[@]}"; do echo "$line"; done
exit $failed

#!/usr/bin/env bash
# Runs the tests under the sanitizers and prints what they found:
#   1. ASan + UBSan (with LeakSanitizer): a CPU-only build in build-asan/ with
#      -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer (so a
#      UBSan error fails its test like an ASan one), then every cpu-labelled ctest test there --
#      the fuzz corpora's replays included;
#   2. TSan: the library and test_engine in build-tsan/ with -fsanitize=thread, then the caching
#      allocator's tests, the multi-threaded stress test among them;
#   3. a summary: per part the build and test times, tests run, failures and sanitizer reports,
#      then the first line of each report. Exits 1 on any failure or report.
# Reports are counted in the tests' whole output (<build>/Testing/Temporary/LastTest.log for
# ctest, <build>/sanitize-*.log otherwise): every report fails its test (UBSan does not recover,
# ASan halts, LeakSanitizer and TSan exit non-zero), so none hides in a passing test.
# (Sanitizer log_path files are not used: GCC's UBSan, linked with ASan, ignores log_path.)
#
# Usage: scripts/sanitize.sh [--ci-subset] [--no-tsan]
#   --ci-subset  the fast share for CI: build-asan-ci/ with only the library, test_engine,
#                test_report, test_autograd, test_nn and the fuzz replays (ASan + UBSan, -O0), run those; no TSan
#                (2 min 49 s from scratch on the 2-core machine: build 138 s, 261 tests 31 s;
#                scripts/run-tests.sh runs it after ctest; docs/sanitizers.md)
#   --no-tsan    leave out part 2
#   SANITIZE_JOBS: build jobs (default: all cores); ctest runs 2 tests at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
tsan=1
for arg in "$@"; do
  case "$arg" in
    --ci-subset) mode=ci; tsan=0 ;;
    --no-tsan) tsan=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "sanitize: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
JOBS=${SANITIZE_JOBS:-$(nproc)}
ROOT=$PWD
# -g1: line tables are all a stack trace needs, and they build much faster than full -g.
# SANITIZE_OPT picks the optimisation: -O1 by default; -O0 for the CI share, whose time is
# mostly the build (measured on the 2-core machine from scratch: 2 min 16 s at -O0 -- build
# 110 s, tests 27 s -- against 3 min 43 s at -O1 -- build 215 s, tests 8 s).
opt=-O1
[ "$mode" = ci ] && opt=-O0
common="${SANITIZE_OPT:-$opt} -g1 -fno-omit-frame-pointer"

now() { date +%s; }
rows=()
report_lines=()
status=0
tsan_log=

# Counts the reports in test output (one per ASan or LeakSanitizer error, per UBSan "runtime
# error", per TSan warning).
count_reports() {
  local file=$1
  [ -f "$file" ] || { echo 0; return; }
  grep -cE '==[0-9]+==ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|WARNING: ThreadSanitizer:' "$file" || true
}
collect_report_lines() {
  local file=$1 label=$2
  [ -f "$file" ] || return 0
  while IFS= read -r line; do report_lines+=("$label: $line"); done < <(
    grep -E 'SUMMARY: (Address|Leak|Thread|UndefinedBehavior)Sanitizer|runtime error:' "$file" |
      sed -E 's/^[^/]*(\/)/\1/' | sort | uniq -c | sort -rn | head -40)
}

# ---- 1. ASan + UBSan -------------------------------------------------------------------------
if [ "$mode" = ci ]; then
  build=build-asan-ci
  targets=(headroom test_engine test_report test_autograd test_nn)
  for f in tests/fuzz/*_fuzz.cpp; do n=$(basename "$f" .cpp); targets+=("fuzz_replay_${n%_fuzz}"); done
else
  build=build-asan
  targets=(all)
fi
t0=$(now)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None -DHEADROOM_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$common -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$build" -j"$JOBS" --target "${targets[@]}"
t1=$(now)
ctest_log="$ROOT/$build/sanitize-ctest.log"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
set +e
if [ "$mode" = ci ]; then
  # The CI share runs its programs directly, each in one process (much faster than a process
  # per test; the first sanitizer report ends that program, which is what CI needs).
  run=0
  failed=0
  : >"$ctest_log"
  for t in "${targets[@]}"; do
    case "$t" in
      headroom) continue ;;
      fuzz_replay_*) n=${t#fuzz_replay_}; dirs=("tests/fuzz/corpus/$n")
                     [ -d "tests/fuzz/regressions/$n" ] && dirs+=("tests/fuzz/regressions/$n")
                     cmd=("$build/tests/fuzz/$t" "${dirs[@]}") ;;
      *) cmd=("$build/tests/$t") ;;
    esac
    out=$("${cmd[@]}" 2>&1)
    rc=$?
    echo "$out" >>"$ctest_log"
    if [[ "$t" == fuzz_replay_* ]]; then
      run=$((run + 1))
      [ "$rc" -ne 0 ] && failed=$((failed + 1))
    else
      run=$((run + $(grep -c '^\[ RUN      \]' <<<"$out")))
      f=$(grep -cE '^\[  FAILED  \] [A-Za-z0-9_/]+\.[A-Za-z0-9_/]+ \(' <<<"$out")
      # A program that died before its summary counts as one more failure.
      if [ "$rc" -ne 0 ] && ! grep -q '^\[  PASSED  \]' <<<"$out"; then f=$((f + 1)); fi
      failed=$((failed + f))
    fi
    [ "$rc" -ne 0 ] && echo "sanitize: failed: $t (exit $rc)"
  done
else
  (
    cd "$build"
    ctest -L cpu -j2 --timeout 3600 --output-on-failure
  ) >"$ctest_log" 2>&1
  run=$(sed -nE 's/.*tests? failed out of ([0-9]+).*/\1/p' "$ctest_log" | tail -1)
  failed=$(sed -nE 's/.* ([0-9]+) tests? failed out of.*/\1/p' "$ctest_log" | tail -1)
fi
set -e
t2=$(now)
output_log=$ctest_log
[ "$mode" = full ] && output_log="$ROOT/$build/Testing/Temporary/LastTest.log"
reports=$(count_reports "$output_log")
collect_report_lines "$output_log" "asan+ubsan"
rows+=("$(printf '%-22s %7ss %7ss %7s %7s %8s' "asan+ubsan ($mode)" $((t1 - t0)) $((t2 - t1)) "${run:-?}" "${failed:-?}" "$reports")")
if [ "${failed:-1}" != 0 ] || [ "$reports" != 0 ]; then
  status=1
  [ "$mode" = full ] && grep -E '^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Child aborted|Exception)' "$ctest_log" | head -40 |
    while IFS= read -r l; do echo "sanitize: failed: $l"; done
fi

# ---- 2. TSan ---------------------------------------------------------------------------------
if [ "$tsan" = 1 ]; then
  tbuild=build-tsan
  t0=$(now)
  cmake -S . -B "$tbuild" -G Ninja -DCMAKE_BUILD_TYPE=None -DHEADROOM_CUDA=OFF -DHEADROOM_BUILD_BENCH=OFF \
    -DCMAKE_CXX_FLAGS="$common -fsanitize=thread" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" -DCMAKE_PROJECT_INCLUDE="$ROOT/scripts/sanitize-tsan.cmake" >/dev/null
  # (scripts/sanitize-tsan.cmake: one file is built without TSan, or the library crashes at load.)
  cmake --build "$tbuild" -j"$JOBS" --target test_engine
  t1=$(now)
  tsan_log="$ROOT/$tbuild/sanitize-tsan.log"
  set +e
  TSAN_OPTIONS="second_deadlock_stack=1:halt_on_error=0" \
    "$tbuild/tests/test_engine" --gtest_filter='CachingAllocator*.*' >"$tsan_log" 2>&1
  rc=$?
  set -e
  t2=$(now)
  run=$(grep -c '^\[ RUN      \]' "$tsan_log" || true)
  failed=$(grep -cE '^\[  FAILED  \] [A-Za-z0-9_]+\.[A-Za-z0-9_/]+ \(' "$tsan_log" || true)
  # A program that died before its summary counts as one failure.
  if [ "$rc" -ne 0 ] && [ "$failed" = 0 ] && ! grep -q '^\[  PASSED  \]' "$tsan_log"; then failed=1; fi
  reports=$(count_reports "$tsan_log")
  collect_report_lines "$tsan_log" "tsan"
  rows+=("$(printf '%-22s %7ss %7ss %7s %7s %8s' "tsan (allocator)" $((t1 - t0)) $((t2 - t1)) "$run" "$failed" "$reports")")
  if [ "$failed" != 0 ] || [ "$reports" != 0 ]; then status=1; fi
fi

echo
echo "sanitize.sh summary ($mode; test output: $output_log${tsan_log:+, $tsan_log})"
printf '%-22s %8s %8s %7s %7s %8s\n' part build tests run failed reports
for r in "${rows[@]}"; do echo "$r"; done
if [ ${#report_lines[@]} -gt 0 ]; then
  echo "reports (count, first line):"
  for l in "${report_lines[@]}"; do echo "  $l"; done
fi
exit $status

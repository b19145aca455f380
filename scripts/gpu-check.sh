#!/usr/bin/env bash
# The GPU check, in one go, for the GPU machine (DESIGN.md, "Working with a GPU"): build (or
# reuse build-gpu/), run the tests labelled cuda (every op on cuda against the f64 CPU
# reference, streams, memory), compute-sanitizer memcheck on a subset, train the two
# Fashion-MNIST examples with --device cuda, and the allocator benchmark's CUDA rows; print a
# short table last. On a machine without a GPU it still runs and says so (the cuda tests
# report skipped, the examples are not run).
#
#   bash scripts/gpu-check.sh                  # build-gpu/ for sm_90
#   HEADROOM_CUDA_ARCH=80 bash scripts/gpu-check.sh
#   HEADROOM_GPU_CHECK_QUICK=1 bash ...        # examples for one epoch each
#
# The PyTorch reference joins it with headroom-bench (issue 5).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/torch/.venv/bin:/usr/local/cuda/bin"
# The GPU machine's newest cuDNN (DESIGN.md); harmless elsewhere.
cudnn=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib
[ -d "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn:${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

log=$(mktemp -d)
declare -a rows
row() { rows+=("| $1 | $2 |"); }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
else
  gpu="none found"
fi
row "GPU" "$gpu"

start=$(date +%s)
if cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHEADROOM_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES="${HEADROOM_CUDA_ARCH:-90}" >"$log/configure.txt" 2>&1 &&
   cmake --build build-gpu -j"$(nproc)" >"$log/build.txt" 2>&1; then
  row "build" "ok ($(( $(date +%s) - start )) s)"
else
  row "build" "FAILED (see $log)"
  tail -30 "$log/configure.txt" "$log/build.txt"
  printf '%s\n' "| check | result |" "|---|---|" "${rows[@]}"
  exit 1
fi

(cd build-gpu && ctest -L cuda --output-on-failure >"$log/ctest.txt" 2>&1)
rc=$?
summary=$(grep -E "tests passed|tests failed" "$log/ctest.txt" | tail -1)
skipped=$(grep -c "\*\*\*Skipped" "$log/ctest.txt")
row "ctest -L cuda" "${summary:-no summary} ($skipped skipped, exit $rc)"

# memcheck slows kernels 10-100x: the memory tests whole, and of the op tests the f32 and f16
# cases (the kernels are the same templates for every dtype).
if command -v compute-sanitizer >/dev/null 2>&1 && [ "$gpu" != "none found" ]; then
  for t in "test_cuda:*" "test_backend_cuda:*f32*:*f16*"; do
    exe=${t%%:*} filter=${t#*:}
    [ -x "./build-gpu/tests/$exe" ] || { row "memcheck $exe" "not built"; continue; }
    compute-sanitizer --tool memcheck --error-exitcode 9 "./build-gpu/tests/$exe" --gtest_filter="$filter" \
      >"$log/memcheck_$exe.txt" 2>&1
    m=$?
    row "memcheck $exe" "$([ $m -eq 0 ] && echo clean || echo "errors (exit $m), see $log/memcheck_$exe.txt")"
  done
else
  row "memcheck" "not run (no GPU or no compute-sanitizer)"
fi

# The examples on the GPU: accuracy beside the CPU's (README: MLP 0.8824 after 5 epochs, CNN
# 0.9145 after 3), and time per epoch.
if [ "$gpu" != "none found" ]; then
  quick=${HEADROOM_GPU_CHECK_QUICK:-0}
  for ex in "mlp_fashion_mnist 5" "cnn_fashion_mnist 3"; do
    name=${ex% *} epochs=${ex#* }
    [ "$quick" = 1 ] && epochs=1
    ./build-gpu/$name --device cuda --epochs "$epochs" >"$log/$name.txt" 2>&1
    e=$?
    acc=$(grep -oE "test accuracy: [0-9.]+" "$log/$name.txt" | tail -1)
    per_epoch=$(grep -oE "time per epoch: [0-9.]+ s|[0-9]+ img/s\)" "$log/$name.txt" | tail -2 | tr -d ')' | paste -sd' ')
    peak=$(grep -oE "peak memory on cuda:0: allocated [0-9.]+ [KMG]?i?B" "$log/$name.txt" | tail -1)
    row "$name --device cuda, $epochs epochs" "${acc:-no accuracy (exit $e)}; ${per_epoch:-?}; ${peak:-}"
    [ $e -eq 0 ] || { rc=1; tail -20 "$log/$name.txt"; }
  done
else
  row "examples --device cuda" "not run (no GPU)"
fi

# headroom-bench's GPU presets beside PyTorch (eager; torch.compile for the bf16 fused GPT-2 only:
# each compilation takes about a minute), then the two side by side with their ratios.
if [ "$gpu" != "none found" ] && [ "${HEADROOM_GPU_CHECK_BENCH:-1}" = 1 ]; then
  ./build-gpu/bench/headroom-bench --preset gpu --device cuda --steps 10 --out "$log/hb" >"$log/hb.txt" 2>&1
  row "headroom-bench --preset gpu" "exit $? (table in $log/hb.txt)"
  if python3 -c "import torch" 2>/dev/null; then
    python3 bench/pytorch_reference.py --preset gpu --compile-presets gpt2-small-bf16-fused --out "$log/torch" \
      >"$log/torch.txt" 2>&1
    row "pytorch_reference --preset gpu" "exit $?"
    python3 bench/pytorch_reference.py --compare "$log/hb/results.json" "$log/torch/results.json" >"$log/compare.txt" 2>&1
    cat "$log/hb.txt" "$log/compare.txt"
  else
    row "pytorch_reference" "not run (no torch in python3)"
  fi
fi

./build-gpu/bench/allocator_bench --benchmark_filter='cuda|caching_pair/' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >"$log/bench.txt" 2>&1
while read -r name _ _ cpu unit _; do
  row "$name" "$cpu $unit"
done < <(grep -E "_median" "$log/bench.txt" | sed 's/_median//')

echo
echo "headroom GPU check, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); logs in $log"
printf '%s\n' "| check | result |" "|---|---|" "${rows[@]}"
[ $rc -eq 0 ]

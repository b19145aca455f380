#!/usr/bin/env bash
# The GPU check, in one go, for the GPU machine (DESIGN.md, "Working with a GPU"): the CUDA tests
# (every op on cuda against the f64 CPU reference, streams, memory, the tensor-core attention),
# compute-sanitizer memcheck on a subset, attention alone in its three forms, headroom-bench's GPU
# presets beside PyTorch, the two Fashion-MNIST examples on cuda and the allocator benchmark's
# CUDA rows; a short table last. Each step has a time limit, so one call fits a lease.
#
# Two ways to get the binaries:
#   bash scripts/gpu-check.sh                       # build build-gpu/ there (sm_90; minutes)
#   bash scripts/gpu-stage.sh                       # here: build for sm_90 and stage the binaries
#   HEADROOM_GPU_PREBUILT=build-gpu/stage bash scripts/gpu-check.sh   # there: run the staged ones
# (the device tool carries build-gpu/stage; the binaries find libheadroom.so through
# LD_LIBRARY_PATH, set below.)
#
#   HEADROOM_CUDA_ARCH=80 bash scripts/gpu-check.sh   # build for another GPU
#   HEADROOM_GPU_CHECK_QUICK=1 ...                    # examples for one epoch, 3 bench steps
#   HEADROOM_GPU_CHECK_STEPS=tests,attention,bench   # only these steps, of: tests, memcheck,
#                                                     # attention, bench (with PyTorch), examples, alloc
# A lease is short (a 10-minute call, 15 minutes in all): every step has a time limit, and all of
# them together can exceed one call; pick steps where the time is tight.
# On a machine without a GPU it still runs and says so (the cuda tests skip themselves).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/torch/.venv/bin:/usr/local/cuda/bin"
# The GPU machine's newest cuDNN (DESIGN.md); harmless elsewhere.
cudnn=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib
[ -d "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn:${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

log=${OUT:-$(mktemp -d)}/gpu-check
mkdir -p "$log"
quick=${HEADROOM_GPU_CHECK_QUICK:-0}
steps_wanted=",${HEADROOM_GPU_CHECK_STEPS:-tests,memcheck,attention,bench,examples,alloc},"
want() { [[ $steps_wanted == *",$1,"* ]]; }
declare -a rows
row() { rows+=("| $1 | $2 |"); }
rc=0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
else
  gpu="none found"
fi
row "GPU" "$gpu"

start=$(date +%s)
if [ -n "${HEADROOM_GPU_PREBUILT:-}" ]; then
  bin=$HEADROOM_GPU_PREBUILT
  if [ -f "$bin/libheadroom.so" ]; then
    row "binaries" "prebuilt in $bin ($(cat "$bin/COMMIT" 2>/dev/null || echo 'commit unknown'))"
  else
    row "binaries" "FAILED: no $bin/libheadroom.so"
    printf '%s\n' "| check | result |" "|---|---|" "${rows[@]}"
    exit 1
  fi
else
  bin=build-gpu
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
fi
export LD_LIBRARY_PATH="$PWD/$bin:$LD_LIBRARY_PATH"
exe() { for p in "$bin/$1" "$bin/tests/$1" "$bin/bench/$1"; do [ -x "$p" ] && { echo "$p"; return; }; done; echo "$bin/$1"; }

# The CUDA tests, run directly (not through ctest, whose files name the build machine's paths).
want tests && for t in test_cuda test_backend_cuda; do
  timeout 300 "$(exe $t)" --gtest_brief=1 >"$log/$t.txt" 2>&1
  e=$?
  passed=$(grep -oE "\[  PASSED  \] [0-9]+" "$log/$t.txt" | grep -oE "[0-9]+$")
  failed=$(grep -oE "\[  FAILED  \] [0-9]+ test" "$log/$t.txt" | grep -oE "[0-9]+")
  skipped=$(grep -oE "\[  SKIPPED \] [0-9]+" "$log/$t.txt" | grep -oE "[0-9]+$")
  row "$t" "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped (exit $e)"
  if [ $e -ne 0 ]; then rc=1; grep -E "^\[  FAILED  \]|Failure|error" "$log/$t.txt" | head -20; fi
done

# memcheck slows kernels 10-100x: the memory tests and attention whole, and of the op tests the
# f16 cases (the kernels are the same templates for every dtype).
if ! want memcheck; then
  :
elif command -v compute-sanitizer >/dev/null 2>&1 && [ "$gpu" != "none found" ]; then
  for t in "test_cuda:*" "test_backend_cuda:*cuda_f16*"; do
    x=${t%%:*} filter=${t#*:}
    timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$(exe "$x")" --gtest_filter="$filter" \
      --gtest_brief=1 >"$log/memcheck_$x.txt" 2>&1
    m=$?
    case $m in
      0) row "memcheck $x" "clean" ;;
      124) row "memcheck $x" "timed out after 150 s (partial log in $log)" ;;
      *) row "memcheck $x" "errors (exit $m), see $log/memcheck_$x.txt"; rc=1; grep -m5 "=========" "$log/memcheck_$x.txt" ;;
    esac
  done
else
  row "memcheck" "not run (no GPU or no compute-sanitizer)"
fi

if [ "$gpu" != "none found" ]; then
  # Attention alone at GPT-2 small's shape: textbook, fused on CUDA cores, fused on tensor cores.
  if want attention; then
    timeout 120 "$(exe attention-bench)" --device cuda --dtype bf16 --iters 10 >"$log/attention.txt" 2>&1
    row "attention-bench bf16 B=8 H=12 T=1024 D=64" "exit $? (table below)"
    if python3 -c "import torch" 2>/dev/null; then  # PyTorch's at the same shape (flash attention)
      echo >>"$log/attention.txt"
      timeout 120 python3 bench/attention_reference.py --device cuda --dtype bf16 --iters 10 >>"$log/attention.txt" 2>&1
      row "attention_reference.py (PyTorch)" "exit $? (table below)"
    fi
  fi

  # headroom-bench's GPU presets beside PyTorch (eager; torch.compile for the bf16 fused GPT-2
  # only: each compilation takes about a minute), then the two side by side with their ratios.
  if want bench; then
    steps=10; [ "$quick" = 1 ] && steps=3
    timeout 300 "$(exe headroom-bench)" --preset gpu --device cuda --steps $steps --out "$log/hb" >"$log/hb.txt" 2>&1
    row "headroom-bench --preset gpu" "exit $? ($steps steps each)"
    # Where GPT-2 small bf16's step goes: GPU time by op (kernels/cuda/op_profile.h).
    timeout 120 "$(exe headroom-bench)" --preset gpt2-small-bf16-fused --device cuda --steps 3 --profile \
      --out "$log/hb-profile" >"$log/profile.txt" 2>&1
    row "headroom-bench --profile gpt2-small-bf16-fused" "exit $? (table below)"
    if python3 -c "import torch" 2>/dev/null; then
      timeout 300 python3 bench/pytorch_reference.py --preset gpu --steps $steps \
        --compile-presets gpt2-small-bf16-fused --out "$log/torch" >"$log/torch.txt" 2>&1
      row "pytorch_reference --preset gpu" "exit $?"
      python3 bench/pytorch_reference.py --compare "$log/hb/results.json" "$log/torch/results.json" \
        >"$log/compare.txt" 2>&1
    else
      row "pytorch_reference" "not run (no torch in python3)"
    fi
  fi

  # The examples on the GPU: accuracy beside the CPU's (README), time per epoch. They need the
  # Fashion-MNIST files (dataset-fashion-mnist).
  if ! want examples; then
    :
  elif [ -d /usr/share/datasets/fashion-mnist ]; then
    for ex in "mlp_fashion_mnist 5" "cnn_fashion_mnist 3"; do
      name=${ex% *} epochs=${ex#* }
      [ "$quick" = 1 ] && epochs=1
      timeout 180 "$(exe $name)" --device cuda --epochs "$epochs" >"$log/$name.txt" 2>&1
      e=$?
      acc=$(grep -oE "test accuracy: [0-9.]+" "$log/$name.txt" | tail -1)
      per_epoch=$(grep -oE "time per epoch: [0-9.]+ s|[0-9]+ img/s\)" "$log/$name.txt" | tail -2 | tr -d ')' | paste -sd' ')
      peak=$(grep -oE "peak memory on cuda:0: allocated [0-9.]+ [KMG]?i?B" "$log/$name.txt" | tail -1)
      row "$name --device cuda, $epochs epochs" "${acc:-no accuracy (exit $e)}; ${per_epoch:-?}; ${peak:-}"
      [ $e -eq 0 ] || { rc=1; tail -5 "$log/$name.txt"; }
    done
  else
    row "examples --device cuda" "not run (no /usr/share/datasets/fashion-mnist)"
  fi
else
  row "GPU steps" "not run (no GPU)"
fi

want alloc && timeout 60 "$(exe allocator_bench)" --benchmark_filter='cuda|caching_pair/' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >"$log/bench.txt" 2>&1
while read -r name _ _ cpu unit _; do
  row "$name" "$cpu $unit"
done < <(grep -sE "_median" "$log/bench.txt" | sed 's/_median//')

echo
[ -f "$log/hb.txt" ] && { echo "## headroom-bench"; grep -E "^\|" "$log/hb.txt" | head -20; }
[ -f "$log/compare.txt" ] && { echo "## beside PyTorch"; cat "$log/compare.txt"; }
[ -f "$log/attention.txt" ] && { echo "## attention"; cat "$log/attention.txt"; }
[ -f "$log/profile.txt" ] && { echo "## GPU time by op"; sed -n '/^GPU time by op/,$p' "$log/profile.txt" | head -30; }
echo
echo "headroom GPU check, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || cat "$bin/COMMIT" 2>/dev/null || echo unknown); logs in $log"
printf '%s\n' "| check | result |" "|---|---|" "${rows[@]}"
[ $rc -eq 0 ]

#!/usr/bin/env bash
# The tour (README, "The tour"): the Fashion-MNIST CNN at batch 1024 for one epoch under a memory
# limit. The plain run runs out of memory and prints the allocator's report; batch splitting
# (--micro-batches auto) and mixed precision (--precision bf16) each make it fit. Recompute
# checkpointing (--checkpoint block) cuts the activation peak but not this CNN's total peak,
# which is the first conv stage's backward (docs/checkpointing.md): the tour shows it failing
# too. A table of peak memory by category, speed and accuracy per technique comes last.
#
#   bash scripts/tour.sh                       # after scripts/setup.sh; build/ must exist
#   TOUR_LIMIT=128MiB TOUR_EPOCHS=2 bash scripts/tour.sh
#   TOUR_F16=1 bash scripts/tour.sh            # adds f16 (slow on a CPU: 16-bit is emulated there)
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${TOUR_LIMIT:-192MiB}
epochs=${TOUR_EPOCHS:-1}
exe=./build/cnn_fashion_mnist
[ -x "$exe" ] || { echo "tour: $exe not built; run scripts/setup.sh first" >&2; exit 1; }
log=$(mktemp -d)
common=(--batch-size 1024 --epochs "$epochs" --memory-limit "$limit")

declare -a rows
run() {  # name, extra flags...
  local name=$1
  shift
  echo
  echo "== $name: cnn_fashion_mnist ${common[*]} $*"
  "$exe" "${common[@]}" "$@" >"$log/$name.txt" 2>&1
  local rc=$?
  grep -vE "^\s*$|epoch [0-9]+/[0-9]+ \[" "$log/$name.txt" | sed 's/^/   /' | tail -n 25
  local peak cats speed acc
  peak=$(grep -oE "allocated [0-9.]+ [KMG]?i?B" "$log/$name.txt" | head -1 | sed 's/allocated //')
  cats=$(grep "by category" "$log/$name.txt" | head -1 | sed -E 's/.*by category: *//; s/;? *$//')
  speed=$(grep -oE "[0-9]+ img/s\)" "$log/$name.txt" | tail -1 | tr -d ')')
  acc=$(grep -oE "test accuracy: [0-9.]+" "$log/$name.txt" | sed 's/test accuracy: //')
  if [ $rc -ne 0 ]; then
    rows+=("| $name | out of memory (exit $rc) | - | - | - | - |")
  else
    rows+=("| $name | ${peak:-?} | ${cats:-?} | ${speed:-?} | ${acc:-?} | $* |")
  fi
}

run baseline
run batch-splitting --micro-batches auto
run mixed-bf16 --precision bf16
run checkpoint-block --checkpoint block
[ "${TOUR_F16:-0}" = 1 ] && run mixed-f16 --precision f16

echo
echo "The tour: CNN, batch 1024, $epochs epoch(s), memory limit $limit (logs in $log)"
printf '%s\n' "| technique | peak allocated | peak by category | speed | test accuracy | flags |" \
              "|---|---|---|---|---|---|" "${rows[@]}"

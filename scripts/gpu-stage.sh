#!/usr/bin/env bash
# Builds the GPU binaries here (no GPU needed: CUDA compiles and links on the CPU machines) and
# stages what scripts/gpu-check.sh runs into build-gpu/stage/, small enough for the device
# tool to carry (16 MiB for sm_90), so that a GPU lease is spent on running, not compiling:
#
#   bash scripts/gpu-stage.sh                     # sm_90 (H100); HEADROOM_CUDA_ARCH=80 for an A100
#   # then, on the GPU machine, with build-gpu/stage carried:
#   HEADROOM_GPU_PREBUILT=build-gpu/stage bash scripts/gpu-check.sh
#
# HEADROOM_GPU_BUILD_DIR picks another build folder (default build-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${HEADROOM_GPU_BUILD_DIR:-build-gpu}
stage=build-gpu/stage
targets="headroom headroom_cuda headroom_nccl headroom_mpi test_cuda test_backend_cuda headroom_bench attention_bench allocator_bench mlp_fashion_mnist cnn_fashion_mnist"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHEADROOM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${HEADROOM_CUDA_ARCH:-90}" >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" -j"$(nproc)" --target $targets
rm -rf "$stage"
mkdir -p "$stage"
# The core loads the CUDA backend and the transports beside it (Note [loadable backends],
# Note [loadable transports]); NCCL's tests (test_cuda Nccl.*) need libheadroom_nccl.so.
cp -L "$build/libheadroom.so" "$build/libheadroom_cuda.so" "$build/libheadroom_nccl.so" "$build/libheadroom_mpi.so" \
  "$stage/"
for f in tests/test_cuda tests/test_backend_cuda bench/headroom-bench bench/attention-bench bench/allocator_bench \
         mlp_fashion_mnist cnn_fashion_mnist; do
  cp "$build/$f" "$stage/"
done
strip --strip-unneeded "$stage"/* 2>/dev/null || true
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!build-gpu' || echo '+local changes'), sm_${HEADROOM_CUDA_ARCH:-90}, $(date -u +%Y-%m-%dT%H:%MZ)" \
  >"$stage/COMMIT"
du -sh "$stage"
cat "$stage/COMMIT"

// Row-wise kernels (softmax, cross-entropy, layer norm): a warp per row for rows up to
// kWarpRowMax elements, a block per row beyond, with the row loop and the reductions written
// once for both shapes (Rows<kBlockRow>) and the launch geometry chosen in one place.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

inline constexpr int64_t kWarpRowMax = 1024;  // rows up to this long take a warp; longer ones a block
inline constexpr int kMaxRowThreads = 512;
inline constexpr int64_t kMaxRowGrid = 65535 * 8;

// A row per warp (kBlockRow false: blockDim.x / 32 rows at a time) or per block. The row loop
// bounds depend only on blockIdx (block rows) or the warp index (warp rows), so the
// synchronisations in block_sum and the shuffles are reached by the whole block or warp.
template <bool kBlockRow>
struct Rows {
  __device__ static int lanes() { return kBlockRow ? blockDim.x : 32; }
  __device__ static int lane() { return kBlockRow ? threadIdx.x : threadIdx.x % 32; }
  __device__ static int64_t first() {
    return kBlockRow ? blockIdx.x : blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  }
  __device__ static int64_t step() { return kBlockRow ? gridDim.x : gridDim.x * static_cast<int64_t>(blockDim.x / 32); }
  // The row's sum, in every lane. `shared` holds 32 values.
  template <typename C>
  __device__ static C sum(C v, C* shared) {
    if constexpr (kBlockRow) return block_sum(v, shared);
    else return warp_sum(v);
  }
};

// A warp per row (8 rows a 256-thread block) up to kWarpRowMax elements, else a block per row
// (512 threads from 8192 elements).
struct RowLaunch {
  bool block_rows;
  unsigned grid, threads;
};

inline RowLaunch row_launch(int64_t rows, int64_t n) {
  if (n <= kWarpRowMax) {
    const int64_t rows_per_block = kBlock / 32;
    return {false, static_cast<unsigned>(std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, kMaxRowGrid)),
            static_cast<unsigned>(kBlock)};
  }
  return {true, static_cast<unsigned>(std::min<int64_t>(rows, kMaxRowGrid)),
          static_cast<unsigned>(n >= 8192 ? kMaxRowThreads : kBlock)};
}

}  // namespace headroom::cuda

// Walking strided tensors on the CPU.
//
// A StridedLayout (kernels/strided_layout.h, shared with the CUDA backend) visits the elements
// of up to four same-shaped tensors (any strides, including the zero strides of a broadcast) in
// row-major order, giving each one's element offset. Dims that are contiguous across all
// operands are merged first, so the innermost loop is usually long and unit-stride. parallel_for splits an index range over the CPU backend's threads when
// the work is large enough to pay for it.
#pragma once

#include <algorithm>
#include <array>
#include <functional>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "kernels/strided_layout.h"

namespace headroom::cpu {

inline constexpr int64_t kParallelGrain = 32768;  // elements per thread below which we stay serial

// The dim merging is the CUDA backend's too (kernels/strided_layout.h); CPU code names it here.
using kernels::StridedLayout;

// Runs f(begin, end) over [0, n) split among the pool's threads when n is large (kernels/cpu/
// parallel.cpp); serially when small, or when called from inside another parallel_for.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);
// Threads parallel_for uses: HEADROOM_NUM_THREADS, else OMP_NUM_THREADS, else the core count.
int num_threads();

}  // namespace headroom::cpu

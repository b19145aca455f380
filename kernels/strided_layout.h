// How a kernel walks N same-shaped operands with any strides: size-1 dims dropped and the dims
// that are contiguous across every operand merged, so the common cases are one long unit-stride
// run. Host-side C++ over engine/ only, shared by both backends -- the CPU loops over it
// (kernels/cpu/strided.h) and the CUDA Indexer is built from it (kernels/cuda/cuda_common.cuh) --
// so both merge a tensor's dims the same way; it sits in kernels/ rather than in either backend
// because neither includes the other (scripts/check-layers.py).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace headroom::kernels {

template <int N>
struct StridedLayout {
  std::vector<int64_t> shape;                   // merged shape
  std::array<std::vector<int64_t>, N> strides;  // per operand, in elements

  explicit StridedLayout(const std::array<const Tensor*, N>& ts) {
    const Shape& s = ts[0]->shape();
    // Start from the full shape, dropping size-1 dims.
    for (size_t d = 0; d < s.size(); ++d) {
      if (s[d] == 1) continue;
      shape.push_back(s[d]);
      for (int k = 0; k < N; ++k) strides[k].push_back(ts[k]->strides()[d]);
    }
    // Merge dim d into d-1 when every operand is contiguous across the pair.
    for (size_t d = shape.size(); d-- > 1;) {
      bool ok = true;
      for (int k = 0; k < N && ok; ++k) ok = strides[k][d - 1] == strides[k][d] * shape[d];
      if (!ok) continue;
      shape[d - 1] *= shape[d];
      shape.erase(shape.begin() + static_cast<int64_t>(d));
      for (int k = 0; k < N; ++k) {
        strides[k][d - 1] = strides[k][d];
        strides[k].erase(strides[k].begin() + static_cast<int64_t>(d));
      }
    }
    if (shape.empty()) {
      shape.push_back(1);
      for (int k = 0; k < N; ++k) strides[k].push_back(0);
    }
  }

  // Calls f(offsets, inner_strides, inner_len) for each run of the innermost dim in
  // [begin, end) of the flattened index space, where offsets are the element offsets of each
  // operand at the start of the run.
  template <typename F>
  void for_range(int64_t begin, int64_t end, F&& f) const {
    const size_t nd = shape.size();
    const int64_t inner = shape[nd - 1];
    std::array<int64_t, N> inner_strides;
    for (int k = 0; k < N; ++k) inner_strides[k] = strides[k][nd - 1];
    int64_t i = begin;
    while (i < end) {
      // Decompose i into a multi-index.
      int64_t rem = i / inner;
      int64_t j = i % inner;
      std::array<int64_t, N> off{};
      for (int k = 0; k < N; ++k) off[k] = j * inner_strides[k];
      for (size_t d = nd - 1; d-- > 0;) {
        int64_t idx = rem % shape[d];
        rem /= shape[d];
        for (int k = 0; k < N; ++k) off[k] += idx * strides[k][d];
      }
      int64_t len = std::min(inner - j, end - i);
      f(off, inner_strides, len);
      i += len;
    }
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace headroom::kernels

// Host-side pieces both backends share: how a strided matrix maps onto a BLAS operand, and the
// argument checks of the fused attention contract (engine/backend.h). Plain C++, no device
// code: kernels/cpu and kernels/cuda include it so that the two implementations of one op read
// their operands the same way and refuse the same inputs with the same messages.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "engine/error.h"
#include "engine/tensor.h"

namespace headroom::kernels {

// How a [rows, cols] matrix with element strides (srow, scol) is passed to a gemm: row-major
// storage with leading dim ld (trans false) or column-major, i.e. the transpose of a row-major
// [cols, rows] (trans true). ok is false when the matrix needs a contiguous copy first. The
// leading dims always satisfy BLAS's ld >= max(1, stored row length).
struct BlasLayout {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};

inline BlasLayout blas_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  const int64_t min_ld_row = std::max<int64_t>(1, cols);
  const int64_t min_ld_col = std::max<int64_t>(1, rows);
  // Row-major: element (i, j) at i * ld + j.
  if (cols <= 1 || scol == 1) {
    if (rows <= 1) return {true, false, min_ld_row};
    if (srow >= min_ld_row) return {true, false, srow};
  }
  // Column-major: element (i, j) at j * ld + i.
  if (rows <= 1 || srow == 1) {
    if (cols <= 1) return {true, true, min_ld_col};
    if (scol >= min_ld_col) return {true, true, scol};
  }
  return {};
}

// Fused attention's problem size: B*H independent heads of T positions and head dim D.
struct AttnGeometry {
  int64_t bh = 0, t = 0, d = 0;
};

// Checks the attention contract: q [B, H, T, D] and every tensor in `others` of q's shape and
// dtype, all contiguous; lse a contiguous f32 [B, H, T].
inline AttnGeometry check_attention(const char* op, const Tensor& q,
                                    std::initializer_list<std::pair<Tensor, const char*>> others,
                                    const Tensor& lse) {
  HR_CHECK(q.dim() == 4, ShapeError, op, ": q must be [B, H, T, D], got ", describe(q));
  auto check_4d = [&](const Tensor& t, const char* name) {
    HR_CHECK(t.defined(), ValueError, op, ": ", name, " is undefined");
    HR_CHECK(t.shape() == q.shape(), ShapeError, op, ": ", name, " has shape ", shape_str(t.shape()), " but q has ",
             shape_str(q.shape()), " (all of q, k, v, out must be [B, H, T, D])");
    HR_CHECK(t.dtype() == q.dtype(), DTypeError, op, ": ", name, " is ", dtype_name(t.dtype()), " but q is ",
             dtype_name(q.dtype()));
    HR_CHECK(t.is_contiguous(), ValueError, op, ": ", name, " must be contiguous, got ", describe(t),
             " with strides ", shape_str(t.strides()));
  };
  check_4d(q, "q");
  for (const auto& [t, name] : others) check_4d(t, name);
  const Shape want{q.size(0), q.size(1), q.size(2)};
  HR_CHECK(lse.defined() && lse.dtype() == DType::f32 && lse.shape() == want && lse.is_contiguous(), ValueError, op,
           ": lse must be a contiguous f32 ", shape_str(want), ", got ",
           lse.defined() ? describe(lse) : std::string("undefined"));
  return {q.size(0) * q.size(1), q.size(2), q.size(3)};
}

}  // namespace headroom::kernels

// One row-major gemm call for the CPU kernels (matmul.cpp, conv.cpp), over OpenBLAS:
// c = a' @ b' + beta * c, where a' is a [M, K] (or, with ta, the transpose of a stored [K, M])
// and b' likewise [K, N]; lda/ldb/ldc are row strides in elements. OpenBLAS threads itself,
// so callers never call this from inside a parallel_for.
#pragma once

#include <cblas.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cpu/denormal.h"

namespace headroom::cpu {

template <typename T>
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: f32 or f64 only");
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  HR_CHECK(M <= kMax && N <= kMax && K <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax, ValueError,
           "gemm: [", M, ", ", K, "] @ [", K, ", ", N, "] (leading dims ", lda, ", ", ldb, ", ", ldc,
           ") exceeds the BLAS integer range");
  DenormalGuard flush;  // Note [denormals]
  const auto fa = ta ? CblasTrans : CblasNoTrans;
  const auto fb = tb ? CblasTrans : CblasNoTrans;
  const auto m = static_cast<blasint>(M), n = static_cast<blasint>(N), k = static_cast<blasint>(K);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, fa, fb, m, n, k, 1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb),
                beta, c, static_cast<blasint>(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, fa, fb, m, n, k, 1.0, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb),
                beta, c, static_cast<blasint>(ldc));
  }
}

}  // namespace headroom::cpu

// One row-major gemm call for the CPU kernels (matmul.cpp, conv.cpp, attention.cpp), over
// OpenBLAS: c = a' @ b' + beta * c, where a' is a [M, K] (or, with ta, the transpose of a stored
// [K, M]) and b' likewise [K, N]; lda/ldb/ldc are row strides in elements.
//
// Note [one set of threads]: OpenBLAS runs single-threaded (parallel.cpp sets it once) and a
// large gemm is split here into row or column blocks of c, one per thread of the backend's pool
// (parallel_for). With OpenBLAS's own threads next to the pool's, two sets of workers took turns
// on the same cores: after a gemm OpenBLAS's threads kept polling for the next one while the
// pool's workers needed the core for the elementwise loop that followed, and 2 threads ran
// slower than 1 (ResNet-18: 71-77 against 79-84 ms a step, issue 17's measurement on the Intel
// machine of 2026-11-27). Called inside a parallel_for (a
// batch of small gemms split by the caller) the gemm runs serially on its thread.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cpu/denormal.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

// Below this many multiply-adds a gemm stays on one thread: waking the pool costs more.
inline constexpr int64_t kGemmParallelFlops = 1LL << 18;

template <typename T>
inline void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b,
                        int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto fa = ta ? CblasTrans : CblasNoTrans;
  const auto fb = tb ? CblasTrans : CblasNoTrans;
  const auto m = static_cast<blasint>(M), n = static_cast<blasint>(N), k = static_cast<blasint>(K);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, fa, fb, m, n, k, 1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta,
                c, static_cast<blasint>(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, fa, fb, m, n, k, 1.0, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta,
                c, static_cast<blasint>(ldc));
  }
}

template <typename T>
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb,
                 T beta, T* c, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: f32 or f64 only");
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  HR_CHECK(M <= kMax && N <= kMax && K <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax, ValueError, "gemm: [", M,
           ", ", K, "] @ [", K, ", ", N, "] (leading dims ", lda, ", ", ldb, ", ", ldc,
           ") exceeds the BLAS integer range");
  DenormalGuard flush;  // Note [denormals]
  const int threads = num_threads();
  if (threads <= 1 || M * N * std::max<int64_t>(K, 1) < kGemmParallelFlops) {
    gemm_serial<T>(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the longer side of c into blocks of whole register tiles (multiples of 16), one a
  // thread; a side too short for that stays whole.
  constexpr int64_t kTile = 16;
  const bool by_rows = M >= N;
  const int64_t side = by_rows ? M : N;
  const int64_t tiles = (side + kTile - 1) / kTile;
  if (tiles < 2) {
    gemm_serial<T>(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    const int64_t lo = t0 * kTile, hi = std::min(side, t1 * kTile);
    if (by_rows) {  // rows [lo, hi) of a' and c
      const T* ap = ta ? a + lo : a + lo * lda;
      gemm_serial<T>(ta, tb, hi - lo, N, K, ap, lda, b, ldb, beta, c + lo * ldc, ldc);
    } else {  // columns [lo, hi) of b' and c
      const T* bp = tb ? b + lo * ldb : b + lo;
      gemm_serial<T>(ta, tb, M, hi - lo, K, a, lda, bp, ldb, beta, c + lo, ldc);
    }
  });
}

}  // namespace headroom::cpu

// Batched matrix multiply through OpenBLAS.
//
// Each batch matrix is handed to cblas_?gemm where it lives: a row-major matrix (unit column
// stride) goes in untransposed with its row stride as leading dim, a column-major one (unit row
// stride, e.g. a transposed view) goes in with the transpose flag and its column stride. Only a
// matrix that is neither (a slice with steps in both dims) is copied to a contiguous scratch.
// A batch stride of 0 broadcasts the same matrix; when b is broadcast and a's batches are
// stacked row-major rows, the batch folds into M and the whole product is one gemm, so that
// OpenBLAS (which threads itself) gets one big call instead of many small ones.
// f16 and bf16 go through f32 scratch: converted, multiplied with sgemm, rounded back.
// BLAS is never called from inside a parallel_for. Note [OpenBLAS core] below makes sure the
// gemm kernels are the ones this CPU can run fastest.
#include <cstdlib>
#include <cstring>

#include "kernels/contract_checks.h"
#include "engine/meta.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm.h"

// Note [OpenBLAS core]: a DYNAMIC_ARCH OpenBLAS picks its kernels from the CPU model at load
// time, and one that predates the CPU (Debian's 0.3.21 on a Sapphire Rapids VM, say) falls back
// to its generic SSE3 "Prescott" kernels: sgemm runs 4-5x slower than the AVX-512 ones the CPU
// supports. So when the library loads, if OpenBLAS chose a pre-AVX2 core while the CPU has
// AVX-512 (or AVX2 and FMA), and the user did not choose one with OPENBLAS_CORETYPE, OpenBLAS is
// re-initialised with SkylakeX (or Haswell) kernels -- exactly what OPENBLAS_CORETYPE=SkylakeX
// would do. The two entry points are weak, so a static or single-arch OpenBLAS just keeps its
// kernels.
extern "C" void gotoblas_dynamic_init(void) __attribute__((weak));
extern "C" void gotoblas_dynamic_quit(void) __attribute__((weak));

namespace headroom::cpu {

namespace {

const char* better_openblas_core() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || !gotoblas_dynamic_init || !gotoblas_dynamic_quit) return nullptr;
  const char* core = openblas_get_corename();
  if (core == nullptr) return nullptr;
  static const char* const kPreAvx2[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"};
  bool generic = false;
  for (const char* name : kPreAvx2) generic = generic || std::strcmp(core, name) == 0;
  if (!generic) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

[[maybe_unused]] const bool kOpenblasCoreChecked = [] {
  if (const char* core = better_openblas_core()) {
    gotoblas_dynamic_quit();
    setenv("OPENBLAS_CORETYPE", core, 1);
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
  }
  return true;
}();

using kernels::blas_layout;
using kernels::BlasLayout;

// A contiguous copy of x (same dtype or `dtype`), through the backend's strided copy.
Tensor contiguous_copy(Backend& be, const Tensor& x, DType dtype) {
  CategoryScope workspace(MemoryCategory::workspace);  // scratch, in the allocator's accounting
  Tensor out = Tensor::empty(x.shape(), TensorOptions().dtype(dtype).device(x.device()));
  if (out.numel() > 0) be.copy(out, x);
  return out;
}

// The same batch view with every batch of the same matrix (stride 0) kept once: converting a
// broadcast operand then costs one matrix, not B.
Tensor unbroadcast_batch(const Tensor& x) {
  if (x.stride(0) != 0 || x.size(0) == 1) return x;
  return x.as_strided({1, x.size(1), x.size(2)}, {0, x.stride(1), x.stride(2)}, x.offset());
}
Tensor rebroadcast_batch(const Tensor& x, int64_t batch) {
  if (x.size(0) == batch) return x;
  return x.as_strided({batch, x.size(1), x.size(2)}, {0, x.stride(1), x.stride(2)}, x.offset());
}

// An f32 copy of a 16-bit operand for sgemm. A batch of transposed contiguous matrices (a weight
// used as W^T) keeps its layout -- converted in memory order, then viewed transposed again, and
// sgemm takes the transpose -- where a contiguous copy converted it element by element across
// the rows (Note [vectorised casts] in copy.cpp: the strided loop stays scalar).
Tensor f32_operand(Backend& be, const Tensor& x) {
  const Tensor u = unbroadcast_batch(x);
  const Tensor t = u.transpose(1, 2);
  if (!u.is_contiguous() && t.is_contiguous()) return contiguous_copy(be, t, DType::f32).transpose(1, 2);
  return contiguous_copy(be, u, DType::f32);
}

template <typename T>
void matmul_blas(Backend& be, Tensor a, Tensor b, const Tensor& out, T beta) {
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  if (B == 0 || M == 0 || N == 0) return;
  T* pc = static_cast<T*>(out.raw_data());
  if (K == 0) {  // an empty sum: out = beta * out
    if (meta_active()) return;
    for (int64_t i = 0; i < B * M * N; ++i) pc[i] = beta == T(0) ? T(0) : beta * pc[i];
    return;
  }
  BlasLayout la = blas_layout(M, K, a.stride(1), a.stride(2));
  BlasLayout lb = blas_layout(K, N, b.stride(1), b.stride(2));
  if (!la.ok) {
    a = contiguous_copy(be, unbroadcast_batch(a), a.dtype());
    a = rebroadcast_batch(a, B);
    la = blas_layout(M, K, a.stride(1), a.stride(2));
  }
  if (!lb.ok) {
    b = contiguous_copy(be, unbroadcast_batch(b), b.dtype());
    b = rebroadcast_batch(b, B);
    lb = blas_layout(K, N, b.stride(1), b.stride(2));
  }
  if (meta_active()) return;  // Note [meta execution]: the copies above were its scratch
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(b.raw_data());
  const int64_t sa = B == 1 ? 0 : a.stride(0), sb = B == 1 ? 0 : b.stride(0);
  // b shared by every batch and a's batches stacked as rows of one matrix: fold B into M.
  if (B > 1 && sb == 0 && !la.trans) {
    const int64_t fold_ld = M == 1 ? a.stride(0) : la.ld;
    if (M == 1 ? a.stride(0) >= std::max<int64_t>(1, K) : a.stride(0) == M * la.ld) {
      gemm<T>(false, lb.trans, B * M, N, K, pa, fold_ld, pb, lb.ld, beta, pc, N);
      return;
    }
  }
  // A batch of gemms (attention's per-head products): whole gemms per thread, each serial inside
  // the pool (Note [one set of threads]); at least kGemmParallelFlops of work a thread.
  const int64_t grain = std::max<int64_t>(1, kGemmParallelFlops / std::max<int64_t>(1, M * N * K));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i)
      gemm<T>(la.trans, lb.trans, M, N, K, pa + i * sa, la.ld, pb + i * sb, lb.ld, beta, pc + i * M * N, N);
  });
}

}  // namespace

void CpuBackend::impl_matmul(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
  // Shapes, dtypes and the output's layout are checked by Backend::matmul (Note [op table]).
  const int64_t B = out.size(0);
  dispatch_float(out.dtype(), "cpu matmul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      matmul_blas<T>(*this, a, b, out, static_cast<T>(beta));
    } else {
      // f16/bf16: f32 scratch for each operand (a broadcast operand converted once) and for
      // the output, which holds out's old values when beta needs them.
      Tensor a32 = rebroadcast_batch(f32_operand(*this, a), B);
      Tensor b32 = rebroadcast_batch(f32_operand(*this, b), B);
      CategoryScope workspace(MemoryCategory::workspace);
      Tensor out32 = beta != 0 ? contiguous_copy(*this, out, DType::f32)
                               : Tensor::empty(out.shape(), TensorOptions().dtype(DType::f32).device(out.device()));
      matmul_blas<float>(*this, a32, b32, out32, static_cast<float>(beta));
      if (out.numel() > 0) copy(out, out32);
    }
  });
}

}  // namespace headroom::cpu

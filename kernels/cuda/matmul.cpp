// Batched matrix multiply through cuBLAS (cublasGemmStridedBatchedEx).
//
// cuBLAS is column-major and headroom row-major. A row-major [M, N] output with leading dim N
// is, read column-major, its transpose [N, M]; so instead of out = a b we ask cuBLAS for
// out^T = b^T a^T, b as cuBLAS's first operand and a as its second, m = N, n = M.
// Each operand is handed over where it lives, as on the CPU (kernels/cpu/matmul.cpp): a matrix
// with unit column stride (row-major) read column-major is already its own transpose, so it goes
// in untransposed (CUBLAS_OP_N) with its row stride as leading dim; one with unit row stride
// (column-major, e.g. a transposed view) goes in with CUBLAS_OP_T and its column stride. Only a
// matrix that is neither (steps in both dims, a zero stride inside a matrix) is first copied to
// a contiguous scratch, tagged workspace. Every 3-d view has one batch stride, which is exactly
// what strided-batched takes -- including 0, which broadcasts one matrix to every batch (a
// broadcast operand that needs a copy is copied once, not B times). When b is broadcast and a's
// batches are stacked rows of one row-major matrix, the batch folds into M and the product is
// one large gemm.
//
// Precision: f32 computes in f32 (CUBLAS_COMPUTE_32F), or with TF32 tensor cores when
// set_allow_tf32 is on; f16 and bf16 are multiplied on tensor cores with f32 accumulation
// (CUBLAS_COMPUTE_32F), and reduced-precision split-K reductions are disallowed so that every
// partial sum stays in f32 as on the CPU; f64 in f64. out is written (=) when beta is 0 (its old
// contents, NaN included, are ignored) and accumulated into (= a b + beta out) otherwise.
// Everything runs on the current stream of out's device; nothing synchronises.
#include <algorithm>
#include <climits>

#include "engine/memory.h"
#include "kernels/contract_checks.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_libs.h"
#include "engine/meta.h"
#include "kernels/cuda/cuda_scope.h"

namespace headroom::cuda {

namespace {

// How a [rows, cols] matrix with element strides (srow, scol) is passed as a cuBLAS operand that
// must come out as its transpose: row-major storage with leading dim ld is CUBLAS_OP_N
// (trans false); column-major storage with leading dim ld is CUBLAS_OP_T (trans true). ok is
// false when the matrix needs a contiguous copy. The leading dims always satisfy cuBLAS's
// ld >= max(1, stored rows). blas_layout (kernels/contract_checks.h) is the CPU's rule too.
using kernels::blas_layout;
using kernels::BlasLayout;

// A contiguous copy of x through the backend's strided copy, counted as workspace.
Tensor contiguous_copy(const Tensor& x) {
  CategoryScope workspace(MemoryCategory::workspace);
  Tensor out = Tensor::empty(x.shape(), TensorOptions().dtype(x.dtype()).device(x.device()));
  if (out.numel() > 0) cuda_backend().copy(out, x);
  return out;
}

// The same batch view with every batch of one matrix (stride 0) kept once, and back.
Tensor unbroadcast_batch(const Tensor& x) {
  if (x.stride(0) != 0 || x.size(0) == 1) return x;
  return x.as_strided({1, x.size(1), x.size(2)}, {0, x.stride(1), x.stride(2)}, x.offset());
}
Tensor rebroadcast_batch(const Tensor& x, int64_t batch) {
  if (x.size(0) == batch) return x;
  return x.as_strided({batch, x.size(1), x.size(2)}, {0, x.stride(1), x.stride(2)}, x.offset());
}

// x as it will be handed to cuBLAS: itself, or a contiguous copy when its layout cannot be.
Tensor blas_operand(const Tensor& x, int64_t batch, BlasLayout& layout) {
  layout = blas_layout(x.size(1), x.size(2), x.stride(1), x.stride(2));
  if (layout.ok) return x;
  Tensor copied = rebroadcast_batch(contiguous_copy(unbroadcast_batch(x)), batch);
  layout = blas_layout(x.size(1), x.size(2), copied.stride(1), copied.stride(2));
  return copied;
}

struct BlasTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
};

BlasTypes blas_types(DType dtype) {
  switch (dtype) {
    case DType::f32: return {CUDA_R_32F, allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
    case DType::f64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F};
    case DType::f16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F};
    case DType::bf16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F};
    default: break;
  }
  throw DTypeError(str_cat("cuda matmul: expected a floating dtype (f32, f64, f16, bf16), got ", dtype_name(dtype)));
}

// cuBLAS takes dims, leading dims and the batch count as int (batch strides are 64-bit).
void check_int(int64_t v, const char* what, const Tensor& a, const Tensor& b, const Tensor& out) {
  HR_CHECK(v <= INT_MAX, ShapeError, "cuda matmul: ", what, " (", v, ") exceeds cuBLAS's int32 limit (", INT_MAX,
           ") in ", describe(a), " @ ", describe(b), " -> ", describe(out));
}

// out = beta * out, for an empty sum (K == 0).
void scale_output(const Tensor& out, double beta) {
  if (beta == 1) return;
  if (beta == 0) {  // written, not scaled: old NaNs do not survive, as with cuBLAS's beta 0
    cuda_backend().fill(out, 0.0);
    return;
  }
  Tensor factor;
  {
    CategoryScope workspace(MemoryCategory::workspace);
    factor = Tensor::empty({1}, out.options());
  }
  cuda_backend().fill(factor, beta);
  const Tensor broadcast = factor.as_strided(out.shape(), Shape(out.shape().size(), 0), factor.offset());
  cuda_backend().binary(BinaryOp::mul, out, broadcast, out);
}

}  // namespace

void CudaBackend::impl_matmul(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
  // Shapes, dtypes and the output's layout are checked by Backend::matmul (Note [op table]).
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  const BlasTypes types = blas_types(out.dtype());
  if (B == 0 || M == 0 || N == 0) return;
  if (meta_active()) {  // Note [meta execution]: the allocations below, in their order, and no gemm
    if (K == 0) return;
    BlasLayout la, lb;
    const Tensor ta = blas_operand(a, B, la);
    const Tensor tb = blas_operand(b, B, lb);
    meta_cublas_workspace(out.device());
    return;
  }
  KernelScope scope(out);
  if (K == 0) {  // an empty sum: out = beta * out (cuBLAS is not asked about k = 0)
    scale_output(out, beta);
    return;
  }
  BlasLayout la, lb;
  const Tensor ta = blas_operand(a, B, la);
  const Tensor tb = blas_operand(b, B, lb);
  check_int(M, "M", a, b, out);
  check_int(N, "N", a, b, out);
  check_int(K, "K", a, b, out);
  check_int(B, "the batch count", a, b, out);
  check_int(la.ld, "a's leading dim", a, b, out);
  check_int(lb.ld, "b's leading dim", a, b, out);

  // A batch of one has no batch stride to speak of.
  int64_t stride_a = B == 1 ? 0 : ta.stride(0), stride_b = B == 1 ? 0 : tb.stride(0);
  int64_t rows = M, batches = B, ld_a = la.ld;
  // b shared by every batch and a's batches stacked as rows of one row-major matrix: fold B into
  // M (one [B*M, K] @ [K, N] gemm). For M == 1 the rows are the batches themselves.
  if (B > 1 && stride_b == 0 && !la.trans && B * M <= INT_MAX) {
    const bool stacked = M == 1 ? stride_a >= std::max<int64_t>(1, K) && stride_a <= INT_MAX : stride_a == M * la.ld;
    if (stacked) {
      ld_a = M == 1 ? stride_a : la.ld;
      rows = B * M;
      batches = 1;
      stride_a = 0;
    }
  }

  cublasHandle_t handle = cublas_handle(scope.device(), scope.stream());
  HR_CUBLAS_CHECK(cublasSetMathMode(
      handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  const float alpha32 = 1.0f, beta32 = static_cast<float>(beta);
  const double alpha64 = 1.0, beta64 = beta;
  const bool f64 = out.dtype() == DType::f64;
  const void* alpha = f64 ? static_cast<const void*>(&alpha64) : static_cast<const void*>(&alpha32);
  const void* beta_ptr = f64 ? static_cast<const void*>(&beta64) : static_cast<const void*>(&beta32);
  // out^T [N, rows] = b^T [N, K] @ a^T [K, rows], column-major.
  HR_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, lb.trans ? CUBLAS_OP_T : CUBLAS_OP_N, la.trans ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
      static_cast<int>(rows), static_cast<int>(K), alpha, tb.raw_data(), types.data, static_cast<int>(lb.ld),
      static_cast<long long>(stride_b), ta.raw_data(), types.data, static_cast<int>(ld_a),
      static_cast<long long>(stride_a), beta_ptr, out.raw_data(), types.data, static_cast<int>(N),
      static_cast<long long>(M * N), static_cast<int>(batches), types.compute, CUBLAS_GEMM_DEFAULT));
  // The scratch copies (ta, tb) are freed when this returns, after the gemm is queued: the
  // caching allocator hands their blocks out again only in this stream's order.
}

}  // namespace headroom::cuda

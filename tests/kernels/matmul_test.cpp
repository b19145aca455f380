// The CPU matmul kernel against a naive triple loop in double, at awkward sizes, in every
// float dtype, with row-major, column-major (transposed), strided (copied) and broadcast
// (batch stride 0) operands, and with beta.
#include <cmath>

#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

Backend& cpu() { return backend_for(Device::cpu()); }

// out[b] = a[b] @ b[b] + beta * old[b], in double on the logical values of any views.
Tensor naive_matmul(const Tensor& a, const Tensor& b, const Tensor& old, double beta) {
  const int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(static_cast<size_t>(B * M * N), 0.0);
  std::vector<double> vo = old.defined() ? old.to_vector<double>() : out;
  for (int64_t i = 0; i < B; ++i)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k)
          acc += va[static_cast<size_t>((i * M + m) * K + k)] * vb[static_cast<size_t>((i * K + k) * N + n)];
        const size_t o = static_cast<size_t>((i * M + m) * N + n);
        out[o] = acc + (beta != 0 ? beta * vo[o] : 0.0);
      }
  return Tensor::from_vector(out, {B, M, N}, DType::f64);
}

// Tolerances: the dtype's defaults, with the absolute part growing like sqrt(K) for the
// rounding that accumulates over a K-long dot product of unit normals.
::testing::AssertionResult matches(const Tensor& got, const Tensor& want, int64_t K) {
  const double grow = std::sqrt(static_cast<double>(std::max<int64_t>(K, 1)));
  return all_close(got, want, testing::default_atol(got.dtype()) * grow, testing::default_rtol(got.dtype()));
}

::testing::AssertionResult run_case(const Tensor& a, const Tensor& b, double beta = 0.0) {
  Tensor out = Tensor::randn({a.size(0), a.size(1), b.size(2)}, a.dtype());
  Tensor old = out.clone();
  cpu().matmul(a, b, out, beta);
  return matches(out, naive_matmul(a, b, old, beta), a.size(2));
}

const DType kFloatTypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16};

TEST(CpuMatmul, AwkwardSizesEveryDtype) {
  const int64_t sizes[] = {1, 3, 127, 128, 129};
  for (DType dt : kFloatTypes)
    for (int64_t M : sizes)
      for (int64_t K : sizes)
        for (int64_t N : sizes) {
          Tensor a = Tensor::randn({1, M, K}, dt), b = Tensor::randn({1, K, N}, dt);
          EXPECT_TRUE(run_case(a, b)) << dtype_name(dt) << " M=" << M << " K=" << K << " N=" << N;
        }
}

TEST(CpuMatmul, TransposedOperands) {
  for (DType dt : kFloatTypes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int64_t B = 3, M = 129, K = 127, N = 3;
        Tensor a = ta ? Tensor::randn({B, K, M}, dt).transpose(1, 2) : Tensor::randn({B, M, K}, dt);
        Tensor b = tb ? Tensor::randn({B, N, K}, dt).transpose(1, 2) : Tensor::randn({B, K, N}, dt);
        EXPECT_TRUE(run_case(a, b)) << dtype_name(dt) << " ta=" << ta << " tb=" << tb;
      }
  // Batch-major transposes: the batch dim in the middle of the storage.
  Tensor a = Tensor::randn({5, 4, 6}).permute({1, 0, 2});  // [4, 5, 6], strides (6, 24, 1)
  Tensor b = Tensor::randn({6, 4, 7}).permute({1, 0, 2});  // [4, 6, 7], strides (7, 28, 1)
  EXPECT_TRUE(run_case(a, b));
}

TEST(CpuMatmul, StridedOperandsInBothDimsAreCopied) {
  for (DType dt : kFloatTypes) {
    // Every other row and column: neither row- nor column-major.
    Tensor a = Tensor::randn({2, 2 * 17, 2 * 9}, dt).slice(1, 0, 34, 2).slice(2, 0, 18, 2);  // [2, 17, 9]
    Tensor b = Tensor::randn({2, 3 * 9, 3 * 5}, dt).slice(1, 0, 27, 3).slice(2, 1, 15, 3);   // [2, 9, 5]
    ASSERT_EQ(a.shape(), (Shape{2, 17, 9}));
    ASSERT_EQ(b.shape(), (Shape{2, 9, 5}));
    EXPECT_TRUE(run_case(a, b)) << dtype_name(dt);
    EXPECT_TRUE(run_case(a, b.transpose(1, 2).contiguous().transpose(1, 2))) << dtype_name(dt);
  }
}

TEST(CpuMatmul, BroadcastBatches) {
  for (DType dt : kFloatTypes) {
    const int64_t B = 4, M = 33, K = 20, N = 17;
    // b shared: with a contiguous the batch folds into M; with a transposed it cannot.
    Tensor shared_b = Tensor::randn({1, K, N}, dt).expand({B, K, N});
    EXPECT_TRUE(run_case(Tensor::randn({B, M, K}, dt), shared_b)) << dtype_name(dt);
    EXPECT_TRUE(run_case(Tensor::randn({B, K, M}, dt).transpose(1, 2), shared_b)) << dtype_name(dt);
    EXPECT_TRUE(run_case(Tensor::randn({B, 1, K}, dt), shared_b)) << dtype_name(dt);  // M = 1 folds too
    // A padded row stride: the batches are not stacked rows, so no fold.
    Tensor padded = Tensor::randn({B, M, K + 3}, dt).slice(2, 0, K);
    EXPECT_TRUE(run_case(padded, shared_b)) << dtype_name(dt);
    // a shared, b per batch, and both shared.
    Tensor shared_a = Tensor::randn({1, M, K}, dt).expand({B, M, K});
    EXPECT_TRUE(run_case(shared_a, Tensor::randn({B, K, N}, dt))) << dtype_name(dt);
    EXPECT_TRUE(run_case(shared_a, shared_b)) << dtype_name(dt);
    // A shared operand that also needs a copy.
    Tensor odd = Tensor::randn({1, 2 * K, 2 * N}, dt).slice(1, 0, 2 * K, 2).slice(2, 0, 2 * N, 2).expand({B, K, N});
    EXPECT_TRUE(run_case(Tensor::randn({B, M, K}, dt), odd)) << dtype_name(dt);
  }
}

TEST(CpuMatmul, BetaAccumulatesAndZeroBetaOverwrites) {
  for (DType dt : kFloatTypes) {
    Tensor a = Tensor::randn({2, 31, 16}, dt), b = Tensor::randn({2, 16, 9}, dt);
    EXPECT_TRUE(run_case(a, b, 1.0)) << dtype_name(dt);
    EXPECT_TRUE(run_case(a, b, 0.5)) << dtype_name(dt);
    // beta = 0 ignores whatever the output held, NaN included.
    Tensor out = Tensor::full({2, 31, 9}, NAN, dt);
    cpu().matmul(a, b, out, 0.0);
    EXPECT_TRUE(matches(out, naive_matmul(a, b, Tensor(), 0.0), 16)) << dtype_name(dt);
  }
}

TEST(CpuMatmul, EmptyInnerDimGivesBetaTimesOut) {
  for (DType dt : kFloatTypes) {
    Tensor a = Tensor::randn({2, 3, 0}, dt), b = Tensor::randn({2, 0, 4}, dt);
    Tensor out = Tensor::full({2, 3, 4}, 2.0, dt);
    cpu().matmul(a, b, out, 0.5);
    EXPECT_TRUE(all_close(out, Tensor::full({2, 3, 4}, 1.0, DType::f64))) << dtype_name(dt);
    cpu().matmul(a, b, out, 0.0);
    EXPECT_TRUE(all_close(out, Tensor::zeros({2, 3, 4}, DType::f64))) << dtype_name(dt);
  }
}

TEST(CpuMatmul, RejectsMismatchedShapesAndDtypes) {
  Tensor a = Tensor::randn({2, 4, 3}), b = Tensor::randn({2, 5, 2}), out = Tensor::empty({2, 4, 2});
  EXPECT_THROW_WITH(cpu().matmul(a, b, out, 0.0), ShapeError, "(2, 4, 3) by (2, 5, 2)");
  EXPECT_THROW_WITH(cpu().matmul(a, Tensor::randn({2, 3, 2}, DType::f64), out, 0.0), DTypeError, "f64");
  EXPECT_THROW_WITH(cpu().matmul(a, Tensor::randn({2, 3, 2}), Tensor::empty({2, 2, 4}).transpose(1, 2), 0.0),
                    ValueError, "contiguous");
  EXPECT_THROW_WITH(cpu().matmul(Tensor::ones({1, 2, 2}, DType::i32), Tensor::ones({1, 2, 2}, DType::i32),
                                 Tensor::empty({1, 2, 2}, DType::i32), 0.0),
                    DTypeError, "i32");
}

}  // namespace
}  // namespace headroom

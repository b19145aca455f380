// Matrix products on every device: 2-d with each of M, K and N at every size in kSizes and a
// 512 x 512 x 512 product, batched, broadcast batches (both sides, and a 2-d operand against a
// batch), transposed (non-contiguous) operands, K = 1 (an outer product), 1-d operands, and
// linear() with and without bias (its bias is pre-written into the output: beta = 1).
//
// Tolerance: each output is a K-term dot product, each input gradient an N- or M-term one
// (dA = dC B^T sums over N, dB = A^T dC over M and the batch), so acc_tol of the longest sum
// (device_test.h). cuBLAS accumulates f16/bf16 products in f32 (TF32 stays off by default:
// kernels/cuda/cuda_libs.h), like the cpu.
#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

class Matmul : public DeviceTest {
 protected:
  // a @ b where a and b are made with shapes sa, sb; ta / tb: made transposed, multiplied as .t()
  // (or .transpose(-1, -2)), so the operand is a non-contiguous view.
  void mm(const std::string& name, const Shape& sa, const Shape& sb, bool ta = false, bool tb = false) {
    int64_t longest = 1;
    for (int64_t d : sa) longest = std::max(longest, d);
    for (int64_t d : sb) longest = std::max(longest, d);
    // Broadcast batches add their terms into the shared operand's gradient.
    int64_t batch = 1;
    for (size_t i = 0; i + 2 < std::max(sa.size(), sb.size()); ++i) batch *= 4;
    const Tol tol = acc_tol(longest * batch);
    check_op(
        name,
        [ta, tb](const V& v) {
          Tensor a = ta ? v[0].transpose(-1, -2) : v[0];
          Tensor b = tb ? v[1].transpose(-1, -2) : v[1];
          return matmul(a, b);
        },
        {randn(sa), randn(sb)}, tol, tol);
  }
};

TEST_P(Matmul, EachDimAtEverySizeAndTransposed) {
  for (int64_t s : kSizes) {
    mm(str_cat("M=", s), {s, 64}, {64, 48});
    mm(str_cat("K=", s), {48, s}, {s, 40});
    mm(str_cat("N=", s), {40, 64}, {64, s});
    mm(str_cat("M=K=N=", s), {s, s}, {s, s});
  }
  mm("512 x 512 x 512", {512, 512}, {512, 512});

  for (int64_t s : {int64_t{1}, int64_t{127}, int64_t{256}}) {
    mm(str_cat("a^T s=", s), {s, 33}, {s, 65}, true, false);
    mm(str_cat("b^T s=", s), {33, s}, {65, s}, false, true);
    mm(str_cat("a^T b^T s=", s), {s, 33}, {65, s}, true, true);
  }
  mm("a^T b^T 384 x 512 x 320", {512, 384}, {320, 512}, true, true);
}

TEST_P(Matmul, BatchedBroadcastOuterAndVectors) {
  mm("batched", {3, 127, 65}, {3, 65, 129});
  mm("batched, b^T", {3, 128, 64}, {3, 255, 64}, false, true);
  mm("broadcast both sides", {2, 1, 33, 64}, {3, 64, 17});
  mm("2-d @ batch", {33, 256}, {4, 256, 20});
  mm("batch @ 2-d", {4, 255, 31}, {31, 127});
  mm("batch of 1 @ batch", {1, 31, 40}, {5, 40, 6});
  mm("batched transposed a", {2, 64, 127}, {2, 64, 33}, true, false);

  mm("K=1", {127, 1}, {1, 255});
  mm("K=1 batched", {2, 128, 1}, {2, 1, 256});
  mm("M=N=1", {1, 256}, {256, 1});
  mm("vector @ matrix", {255}, {255, 64});
  mm("matrix @ vector", {64, 127}, {127});
  mm("vector . vector", {256}, {256});
  mm("long dot product", {int64_t{1} << 18}, {int64_t{1} << 18});
  mm("vector @ batch", {128}, {3, 128, 5});
}

TEST_P(Matmul, Linear) {
  for (int64_t s : kSizes) {
    const Tol tol = acc_tol(std::max<int64_t>(s, 64));
    check_op(
        str_cat("linear with bias, in=", s), [](const V& v) { return linear(v[0], v[1], v[2]); },
        {randn({64, s}), randn({33, s}), randn({33})}, tol, tol);
    check_op(
        str_cat("linear without bias, out=", s), [](const V& v) { return linear(v[0], v[1], Tensor()); },
        {randn({5, 7, 40}), randn({s, 40})}, tol, tol);
  }
}

HR_DEVICE_DTYPE_SUITE(Matmul);

}  // namespace
}  // namespace headroom::testing

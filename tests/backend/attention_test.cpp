// Fused attention on every device against the textbook composite in f64 on the cpu (matmul,
// masked_fill, softmax, matmul: an independent formula), forward and the gradients of q, k and
// v, causal and not. The sequence length takes every size in kSizes (around the kernels'
// 64-row tiles) and a large one; the head dim 64 (GPT-2's), 128 (the cuda kernel's limit) and
// 40 (not a multiple of the kernels' 16- and 64-wide column blocks). On cuda, f16/bf16 with D 64
// and 128 run on the tensor-core kernels (kernels/cuda/attention_tc.cu, sm_80+), everything
// else on the CUDA-core ones, so both meet the reference here.
//
// Tolerances: each output is a weighted mean over up to T values and each gradient a sum over T
// (and D) terms, accumulated in f32 (f64 for f64): acc_tol(T). lse is f64 for f64 (Note
// [statistics dtype]), so f64 is held to f64's tolerance. Backward forms dS = P (dP - D) with
// D = rowsum(dout * out) taken from the output as stored -- rounded to f16/bf16 -- and dP - D
// cancels, so the 16-bit gradients carry a few output roundoffs more: a factor 4 there.
#include <cmath>

#include "autograd/functions/attention.h"
#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

class Attention : public DeviceTest {
 protected:
  void run(int64_t b, int64_t h, int64_t t, int64_t d, bool causal) {
    const Tol fwd = acc_tol(t), bwd = acc_tol(t, 4);
    check_op(
        str_cat("attention B=", b, " H=", h, " T=", t, " D=", d, causal ? " causal" : " full"),
        [causal](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], causal, AttentionImpl::fused); },
        {randn({b, h, t, d}), randn({b, h, t, d}), randn({b, h, t, d})}, fwd, bwd, true,
        [causal](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], causal, AttentionImpl::naive); });
  }
};

TEST_P(Attention, CausalEverySize) {
  for (int64_t t : kSizes) run(1, 2, t, 64, true);
}

TEST_P(Attention, FullAndOddHeadDims) {
  for (int64_t t : {1, 130}) run(2, 1, t, 40, false);
  run(1, 1, 130, 128, true);
}

TEST_P(Attention, Large) { run(2, 2, 512, 64, true); }

HR_DEVICE_DTYPE_SUITE(Attention);

}  // namespace
}  // namespace headroom::testing

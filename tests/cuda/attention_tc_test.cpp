// The tensor-core attention kernels (kernels/cuda/attention_tc.cu) against the CUDA-core ones
// (attention.cu) on the same inputs, forward and backward, and the rule that picks between
// them. The backend tests (tests/backend/attention_test.cpp) check both against the f64 CPU
// reference: head dims 64 and 128 in f16/bf16 take the tensor cores there, 40 and f32 the CUDA
// cores. Skipped without a GPU.
//
// Tolerance: the tensor-core kernels round P (and dS in backward) to the input's 16 bits
// before multiplying, as FlashAttention does, where the CUDA-core kernels keep them in f32; the
// outputs are rounded to 16 bits by both. So they differ by a few roundings of the dtype:
// 3e-2 (bf16, 8 bits) and 5e-3 (f16, 11 bits) of the largest magnitude of each result.
#include <cmath>

#include "autograd/functions/attention.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/cuda_memory.h"
#include "test_util.h"

namespace headroom {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

bool sm80_or_newer() {
  int major = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess && major >= 8;
}

// Restores the switch when a test ends, however it ends.
struct TensorCoreSwitch {
  explicit TensorCoreSwitch(bool allow) : previous(cuda::set_attention_tensor_cores(allow)) {}
  ~TensorCoreSwitch() { cuda::set_attention_tensor_cores(previous); }
  bool previous;
};

struct Result {
  std::vector<double> out, dq, dk, dv;
};

// Fused attention and its gradients for a weighted sum of the output, on cuda:0.
Result run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& w0, bool causal, bool tensor_cores) {
  TensorCoreSwitch sw(tensor_cores);
  const Device gpu = Device::cuda(0);
  Tensor q = q0.to(gpu).set_requires_grad(true), k = k0.to(gpu).set_requires_grad(true),
         v = v0.to(gpu).set_requires_grad(true);
  Tensor out = scaled_dot_product_attention(q, k, v, causal, AttentionImpl::fused);
  (out.to(DType::f32) * w0.to(gpu)).sum().backward();
  auto host = [](const Tensor& x) { return x.to(Device::cpu()).to(DType::f64).contiguous().to_vector<double>(); };
  return {host(out), host(q.grad()), host(k.grad()), host(v.grad())};
}

// max |a - b| / max |b|, or the absolute difference when b is all zero.
double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
    if (!std::isfinite(a[i])) return INFINITY;
  }
  return scale > 0 ? diff / scale : diff;
}

TEST(AttentionTensorCores, ChosenForHalfPrecisionAndHeadDims64And128Only) {
  SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  TensorCoreSwitch sw(true);
  const bool tc = sm80_or_newer();  // the default build compiles for sm_80 and sm_90
  EXPECT_EQ(cuda::attention_uses_tensor_cores(gpu, DType::bf16, 64), tc);
  EXPECT_EQ(cuda::attention_uses_tensor_cores(gpu, DType::f16, 64), tc);
  EXPECT_EQ(cuda::attention_uses_tensor_cores(gpu, DType::bf16, 128), tc);
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(gpu, DType::f32, 64));
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(gpu, DType::f64, 64));
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(gpu, DType::bf16, 40));
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(gpu, DType::bf16, 96));
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(Device::cpu(), DType::bf16, 64));
  cuda::set_attention_tensor_cores(false);
  EXPECT_FALSE(cuda::attention_uses_tensor_cores(gpu, DType::bf16, 64));
}

TEST(AttentionTensorCores, AgreeWithTheCudaCoreKernels) {
  SKIP_WITHOUT_GPU();
  if (!sm80_or_newer()) GTEST_SKIP() << "the tensor-core kernels need sm_80 or newer";
  struct Case {
    int64_t b, h, t, d;
    bool causal;
  };
  // Lengths around the 64-row tiles, both head dims, causal and full, and GPT-2 small's T.
  const Case cases[] = {{1, 2, 1, 64, true},   {1, 2, 63, 64, true},   {2, 1, 64, 64, true},   {1, 2, 65, 64, false},
                        {1, 3, 200, 64, true}, {1, 1, 130, 128, true}, {1, 1, 77, 128, false}, {1, 2, 1024, 64, true}};
  for (DType dt : {DType::bf16, DType::f16}) {
    const double tol = dt == DType::bf16 ? 3e-2 : 5e-3;
    for (const Case& c : cases) {
      manual_seed(static_cast<uint64_t>(c.t * 131 + c.d));
      const Tensor q = Tensor::randn({c.b, c.h, c.t, c.d}).to(dt), k = Tensor::randn({c.b, c.h, c.t, c.d}).to(dt),
                   v = Tensor::randn({c.b, c.h, c.t, c.d}).to(dt), w = Tensor::randn({c.b, c.h, c.t, c.d});
      const Result tc = run(q, k, v, w, c.causal, true), cores = run(q, k, v, w, c.causal, false);
      const std::string what =
          str_cat(dtype_name(dt), " B=", c.b, " H=", c.h, " T=", c.t, " D=", c.d, c.causal ? " causal" : " full");
      EXPECT_LE(rel_err(tc.out, cores.out), tol) << what << ": out";
      EXPECT_LE(rel_err(tc.dq, cores.dq), tol) << what << ": dq";
      EXPECT_LE(rel_err(tc.dk, cores.dk), tol) << what << ": dk";
      EXPECT_LE(rel_err(tc.dv, cores.dv), tol) << what << ": dv";
    }
  }
}

TEST(AttentionTensorCores, MisalignedViewsAreStillRight) {
  SKIP_WITHOUT_GPU();
  // q, k, v one element into a larger buffer: contiguous, but 2 bytes off the 16-byte grid the
  // tensor-core loads need.
  const int64_t n = 1 * 2 * 70 * 64;
  manual_seed(3);
  auto shifted = [n]() {
    Tensor buffer = Tensor::randn({n + 1}).to(DType::bf16).to(Device::cuda(0));
    return buffer.as_strided({1, 2, 70, 64}, {2 * 70 * 64, 70 * 64, 64, 1}, buffer.offset() + 1);
  };
  const Tensor q = shifted(), k = shifted(), v = shifted();
  TensorCoreSwitch sw(true);
  const Tensor got = scaled_dot_product_attention(q, k, v, true, AttentionImpl::fused);
  const Tensor ref =
      scaled_dot_product_attention(q.to(Device::cpu()).to(DType::f64), k.to(Device::cpu()).to(DType::f64),
                                   v.to(Device::cpu()).to(DType::f64), true, AttentionImpl::naive);
  const std::vector<double> g = got.to(Device::cpu()).to(DType::f64).to_vector<double>();
  EXPECT_LE(rel_err(g, ref.to_vector<double>()), 3e-2);
}

}  // namespace
}  // namespace headroom

// The op profile (kernels/cuda/op_profile.h): each backend op's GPU time under its name, nested
// scopes counted once, nothing recorded outside a profile. Skipped without a GPU.
#include <map>

#include "autograd/functions.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/op_profile.h"
#include "test_util.h"

namespace headroom {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

std::map<std::string, cuda::OpTime> by_name(const std::vector<cuda::OpTime>& ops) {
  std::map<std::string, cuda::OpTime> m;
  for (const cuda::OpTime& t : ops) m[t.name] = t;
  return m;
}

TEST(OpProfile, NamesEveryOpAndCountsItsCalls) {
  SKIP_WITHOUT_GPU();
  const TensorOptions gpu = TensorOptions().device(Device::cuda(0));
  Tensor a = Tensor::randn({256, 256}, gpu), b = Tensor::randn({256, 256}, gpu);
  (void)matmul(a, b);  // handles and workspace made before the profile
  cuda::start_op_profile();
  EXPECT_TRUE(cuda::op_profile_running());
  Tensor c = matmul(a, b);
  Tensor d = matmul(c, b);
  Tensor e = exp(d * 0.001) + a;
  Tensor f = e.to(DType::bf16);
  const double s = f.to(DType::f32).sum().item<double>();  // a host read inside the profile
  const auto ops = by_name(cuda::stop_op_profile());
  EXPECT_FALSE(cuda::op_profile_running());
  EXPECT_TRUE(std::isfinite(s));
  ASSERT_TRUE(ops.count("matmul")) << "no matmul in the profile";
  EXPECT_EQ(ops.at("matmul").calls, 2);
  EXPECT_GT(ops.at("matmul").ms, 0.0);
  for (const char* name : {"binary mul", "unary exp", "binary add", "cast", "reduce sum"})
    EXPECT_TRUE(ops.count(name)) << "no '" << name << "' in the profile";
  for (const auto& [name, t] : ops) EXPECT_GE(t.ms, 0.0) << name;

  // Outside a profile nothing is recorded; a new profile starts empty.
  (void)matmul(a, b);
  cuda::start_op_profile();
  EXPECT_TRUE(cuda::stop_op_profile().empty());
}

}  // namespace
}  // namespace headroom

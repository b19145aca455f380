#include "test_util.h"

namespace headroom {
namespace {

TEST(Denormals, FlushedToZeroByDefaultAndRestorable) {
  const float tiny = 1e-39f;  // below f32's smallest normal (1.18e-38)
  ASSERT_EQ(std::fpclassify(tiny), FP_SUBNORMAL);
  Tensor x = Tensor::full({1000}, static_cast<double>(tiny));
  EXPECT_TRUE(flush_denormal());
  EXPECT_EQ((x * 1.0f).sum().item<double>(), 0.0);                 // the kernel reads denormals as zero
  Tensor m = Tensor::full({512, 512}, static_cast<double>(tiny));  // big enough for OpenBLAS to thread
  EXPECT_EQ(matmul(m, Tensor::ones({512, 512})).sum().item<double>(), 0.0);
  EXPECT_TRUE(set_flush_denormal(false));
  EXPECT_GT((x * 1.0f).sum().item<double>(), 0.0);  // gradual underflow: the values survive
  set_flush_denormal(true);
  // The caller's own floating-point mode is left as it was.
  volatile float v = tiny;
  EXPECT_EQ(std::fpclassify(v * 1.0f), FP_SUBNORMAL);
}

}  // namespace
}  // namespace headroom

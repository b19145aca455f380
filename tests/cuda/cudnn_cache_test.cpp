// cuDNN's benchmark mode remembers one convolution algorithm per shape, dtype, parameters and
// direction (kernels/cuda/cudnn_util.h): a second call of a shape does not search again, another
// shape adds an entry, and clearing forgets them all.
#include "autograd/functions.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/cudnn_util.h"
#include "test_util.h"

namespace headroom {
namespace {

TEST(CudnnBenchmark, RemembersOneAlgorithmPerShapeAndForgetsOnClear) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU";
  const bool was = cuda::set_cudnn_benchmark(true);
  cuda::clear_conv_algorithm_cache();
  const TensorOptions gpu = TensorOptions().device(Device::cuda(0));
  Tensor w = Tensor::randn({8, 3, 3, 3}, gpu);
  Tensor a = Tensor::randn({2, 3, 16, 16}, gpu), b = Tensor::randn({2, 3, 24, 24}, gpu);
  (void)conv2d(a, w, Tensor(), 1, 1);
  const size_t after_one = cuda::conv_algorithm_cache_size();
  EXPECT_GE(after_one, 1u);
  (void)conv2d(a, w, Tensor(), 1, 1);
  EXPECT_EQ(cuda::conv_algorithm_cache_size(), after_one);  // the same shape: no new search
  (void)conv2d(b, w, Tensor(), 1, 1);
  EXPECT_GT(cuda::conv_algorithm_cache_size(), after_one);
  cuda::clear_conv_algorithm_cache();
  EXPECT_EQ(cuda::conv_algorithm_cache_size(), 0u);
  cuda::set_cudnn_benchmark(was);
}

}  // namespace
}  // namespace headroom

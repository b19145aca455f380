// End to end on cuda:0: the same small conv net trained for a few steps on the CPU and on the
// GPU from the same initial weights and batches must end with the same parameters (to f32
// tolerance: the GPU sums in another order), and the GPU's memory is accounted by category
// like the CPU's. Skipped without a GPU.
#include "kernels/cuda/cuda_memory.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

std::shared_ptr<nn::Sequential> small_cnn() {
  using namespace nn;
  return std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Conv2d>(1, 8, 3, /*stride=*/1, /*padding=*/1), std::make_shared<BatchNorm2d>(8),
      std::make_shared<ReLU>(), std::make_shared<MaxPool2d>(2), std::make_shared<Conv2d>(8, 16, 3, 1, 1),
      std::make_shared<ReLU>(), std::make_shared<AvgPool2d>(2), std::make_shared<Flatten>(),
      std::make_shared<Linear>(16 * 7 * 7, 10)});
}

std::vector<Tensor> train(Device device, int steps) {
  manual_seed(77);
  std::vector<Tensor> xs, ys;
  for (int step = 0; step < steps; ++step) {
    xs.push_back(Tensor::randn({32, 1, 28, 28}));
    ys.push_back((Tensor::rand({32}) * 9.99).to(DType::i64));
  }
  manual_seed(5);
  auto model = small_cnn();
  model->to(device);
  optim::Adam opt(model->parameters(), 1e-3);
  for (int step = 0; step < steps; ++step) {
    const Tensor& x = xs[static_cast<size_t>(step)];
    const Tensor& y = ys[static_cast<size_t>(step)];
    opt.zero_grad();
    Tensor loss = cross_entropy((*model)(x.to(device)), y.to(device));
    loss.backward();
    opt.step();
  }
  std::vector<Tensor> params;
  for (const Tensor& p : model->parameters()) params.push_back(p.to(Device::cpu()));
  return params;
}

TEST(CudaTrain, SmallCnnMatchesTheCpuStepForStep) {
  SKIP_WITHOUT_GPU();
  const std::vector<Tensor> cpu = train(Device::cpu(), 5);
  const std::vector<Tensor> gpu = train(Device::cuda(0), 5);
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i)
    EXPECT_TRUE(testing::all_close(gpu[i], cpu[i], 2e-3, 2e-3)) << "parameter " << i;
}

TEST(CudaTrain, GpuMemoryIsAccountedByCategory) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.reset_peak_stats();
  train(Device::cuda(0), 2);
  const MemoryStats s = gpu.stats();
  EXPECT_GT(s.category(MemoryCategory::parameter).peak, 0);
  EXPECT_GT(s.category(MemoryCategory::gradient).peak, 0);
  EXPECT_GT(s.category(MemoryCategory::optimizer_state).peak, 0);
  EXPECT_GT(s.category(MemoryCategory::activation).peak, 0);
}

}  // namespace
}  // namespace headroom

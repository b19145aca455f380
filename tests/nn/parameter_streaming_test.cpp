// Parameter streaming (Note [parameter streaming]): a model whose parameters exceed the device's
// limit runs layer by layer, its output bit-identical to the model run whole elsewhere, with the
// device's parameter bytes at most the layers in flight.
#include <cstring>

#include "autograd/grad_mode.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr int64_t kWidth = 1024, kLayers = 6;  // 4 MiB of weights a layer, 24 MiB in all

std::vector<std::shared_ptr<nn::Module>> layers(Device device) {
  manual_seed(9);
  std::vector<std::shared_ptr<nn::Module>> out;
  for (int64_t i = 0; i < kLayers; ++i) {
    auto seq = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(kWidth, kWidth), std::make_shared<nn::ReLU>()});
    seq->to(device);
    out.push_back(seq);
  }
  return out;
}

std::vector<uint32_t> bits(const Tensor& t) {
  const std::vector<float> v = t.contiguous().to_vector<float>();
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

TEST(ParameterStreamer, RunsAModelLargerThanTheDeviceBitIdentically) {
  manual_seed(5);
  const Tensor x = Tensor::randn({16, kWidth});
  NoGradGuard no_grad;
  Tensor expected = x;
  for (auto& l : layers(Device::cpu(3))) expected = l->forward(expected.to(Device::cpu(3)));

  const Device dev = Device::cpu(2);
  CachingAllocator& a = caching_allocator(dev);
  a.set_memory_limit(size_t{16} << 20);
  // The whole model does not fit.
  EXPECT_THROW(layers(dev), OutOfMemoryError);
  a.empty_cache();

  CachingAllocator& pool = host_pool();
  const int64_t pool_params0 = pool.stats().category(MemoryCategory::parameter).current;
  auto model = layers(Device::cpu(3));  // made elsewhere, then handed to the streamer
  int64_t param_bytes = 0;
  for (auto& l : model) param_bytes += static_cast<int64_t>(l->num_parameters()) * 4;
  nn::ParameterStreamer streamer(model, dev, /*prefetch=*/1);
  EXPECT_EQ(streamer.host_bytes(), param_bytes);
  EXPECT_GE(pool.stats().category(MemoryCategory::parameter).current - pool_params0, param_bytes);
  a.reset_peak_stats();
  const Tensor y = streamer.forward(x);
  EXPECT_EQ(bits(y), bits(expected));
  // At most two layers' parameters on the device at once: the running one and the next.
  const int64_t layer_bytes = param_bytes / kLayers;
  EXPECT_LE(a.stats().category(MemoryCategory::parameter).peak, 2 * layer_bytes + 2 * 4096);
  EXPECT_GT(a.stats().category(MemoryCategory::parameter).peak, layer_bytes);
  EXPECT_EQ(a.stats().category(MemoryCategory::parameter).current, 0);
  const nn::ParameterStreamerStats s = streamer.stats();
  EXPECT_EQ(s.layers_fetched, kLayers);
  EXPECT_EQ(s.fetched_ahead, kLayers - 1);
  EXPECT_EQ(s.bytes_fetched, param_bytes);
  // A second pass streams again and gives the same output.
  EXPECT_EQ(bits(streamer.forward(x)), bits(expected));
  a.set_memory_limit(0);
}

// Every allocation of a streamed forward failed in turn (Note [fault injection]): an
// OutOfMemoryError, nothing left on the device, every layer back on the host, and the next
// forward gives the same output. The same for the host pool while the streamer is made: the
// model is left as it was.
TEST(ParameterStreamer, EveryAllocationFailedInTurnLeavesNothingBehind) {
  manual_seed(5);
  const Tensor x = Tensor::randn({4, kWidth});
  NoGradGuard no_grad;
  const Device dev = Device::cpu(2);
  CachingAllocator& a = caching_allocator(dev);
  CachingAllocator& pool = host_pool();

  auto model = layers(Device::cpu(3));
  const int64_t pool_before = pool.stats().allocated_bytes.current;
  int64_t pool_requests = 0;
  {
    const int64_t n0 = pool.stats().num_allocs;
    nn::ParameterStreamer probe(layers(Device::cpu(3)), dev);
    pool_requests = pool.stats().num_allocs - n0;
  }
  ASSERT_GT(pool_requests, 0);
  for (int64_t k = 1; k <= pool_requests; ++k) {
    pool.inject_fault(FaultKind::allocation, k);
    EXPECT_THROW(nn::ParameterStreamer(model, dev), OutOfMemoryError) << "host pool allocation " << k;
    pool.clear_fault();
    EXPECT_EQ(pool.stats().allocated_bytes.current, pool_before) << "host pool allocation " << k;
    for (auto& l : model)
      for (const Tensor& p : l->parameters()) EXPECT_EQ(p.device(), Device::cpu(3)) << "host pool allocation " << k;
  }

  nn::ParameterStreamer streamer(model, dev, /*prefetch=*/1);
  const int64_t device_before = a.stats().allocated_bytes.current;
  const int64_t n0 = a.stats().num_allocs;
  const std::vector<uint32_t> expected = bits(streamer.forward(x));
  const int64_t requests = a.stats().num_allocs - n0;
  ASSERT_GT(requests, 0);
  for (int64_t k = 1; k <= requests; ++k) {
    a.inject_fault(FaultKind::allocation, k);
    EXPECT_THROW((void)streamer.forward(x), OutOfMemoryError) << "device allocation " << k;
    a.clear_fault();
    EXPECT_EQ(a.stats().allocated_bytes.current, device_before) << "device allocation " << k;
    EXPECT_EQ(bits(streamer.forward(x)), expected) << "after device allocation " << k;
  }
}

TEST(ParameterStreamer, IsForInferenceAndChecksItsArguments) {
  auto model = layers(Device::cpu(3));
  nn::ParameterStreamer streamer(model, Device::cpu(2), 0);
  EXPECT_THROW_WITH(streamer.forward(Tensor::randn({2, kWidth})), ValueError, "NoGradGuard");
  EXPECT_THROW_WITH(nn::ParameterStreamer({}, Device::cpu(2)), ValueError, "no layers");
  EXPECT_THROW_WITH(nn::ParameterStreamer(model, Device::cpu(2), -1), ValueError, "prefetch");
  NoGradGuard no_grad;
  (void)streamer.forward(Tensor::randn({2, kWidth}));
  EXPECT_EQ(streamer.stats().fetched_ahead, 0);
}

}  // namespace
}  // namespace headroom

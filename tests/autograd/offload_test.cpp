// Activation offload (Note [activation offload]): gradients bit-identical to no offload, the
// device's activation bytes fall by exactly the bytes the host pool took, a memory limit that
// stops the plain step lets the offloaded one fit, prefetch one segment ahead from node
// pre-hooks, checkpoints offloaded, the version check, retain_graph and meta execution.
// Each test uses cpu devices of its own, so that their allocators count only the test's bytes.
#include <cstring>

#include "autograd/offload.h"
#include "engine/meta.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

std::vector<std::shared_ptr<nn::Module>> mlp_layers(int64_t width, int64_t depth) {
  std::vector<std::shared_ptr<nn::Module>> layers;
  for (int64_t i = 0; i < depth; ++i) {
    layers.push_back(std::make_shared<nn::Linear>(width, width));
    layers.push_back(std::make_shared<nn::ReLU>());
  }
  layers.push_back(std::make_shared<nn::Linear>(width, 10));
  return layers;
}

std::shared_ptr<nn::Sequential> mlp(int64_t width, int64_t depth, Device device) {
  manual_seed(3);
  auto model = std::make_shared<nn::Sequential>();
  for (auto& m : mlp_layers(width, depth)) model->push_back(m);
  model->to(device);
  return model;
}

Tensor batch(int64_t n, int64_t width, Device device) {
  manual_seed(4);
  return Tensor::randn({n, width}, TensorOptions().device(device));
}

std::vector<std::vector<uint32_t>> grad_bits(const nn::Module& m) {
  std::vector<std::vector<uint32_t>> out;
  for (const Tensor& p : m.parameters()) {
    const std::vector<float> v = p.grad().contiguous().to_vector<float>();
    std::vector<uint32_t> bits(v.size());
    std::memcpy(bits.data(), v.data(), v.size() * sizeof(float));
    out.push_back(std::move(bits));
  }
  return out;
}

int64_t activation_now(Device d) { return caching_allocator(d).stats().category(MemoryCategory::activation).current; }

TEST(ActivationOffload, GradientsAreBitIdenticalAndPrefetchRunsOneSegmentAhead) {
  const Device dev = Device::cpu(5);
  auto plain_model = mlp(256, 6, dev);
  Tensor x = batch(64, 256, dev);
  plain_model->forward(x).pow(2.0).mean().backward();
  const int64_t act0 = activation_now(dev);  // x, saved by the plain run
  const auto plain = grad_bits(*plain_model);

  auto model = mlp(256, 6, dev);
  Tensor loss;
  ActivationOffloadStats stats;
  {
    ActivationOffload offload({.min_bytes = 0, .segment_bytes = 0});
    loss = model->forward(x).pow(2.0).mean();
    stats = offload.stats();
    loss.backward();
    stats = offload.stats();
  }
  EXPECT_EQ(grad_bits(*model), plain);
  // Linear saves its input, ReLU its output (which the next Linear saves again: shared).
  EXPECT_GT(stats.tensors, stats.storages);
  EXPECT_EQ(stats.kept_on_device, 6);  // the weights of the Linears whose input needs a gradient
  EXPECT_GT(stats.segments, 6);
  // Only what the first nodes of backward need comes back at its use; the rest comes ahead.
  EXPECT_GT(stats.prefetched, 0);
  EXPECT_LE(stats.fetched_at_use, 2) << stats.prefetched;
  EXPECT_EQ(stats.prefetched + stats.fetched_at_use, stats.storages);
  // Nothing offloaded is left anywhere.
  EXPECT_EQ(activation_now(dev), act0);
}

TEST(ActivationOffload, DeviceActivationBytesFallByExactlyWhatTheHostPoolTook) {
  const Device dev = Device::cpu(5);
  auto model = mlp(256, 4, dev);
  // Batch 64: inputs and ReLU outputs are 64 KiB each; the loss's small tensors stay.
  Tensor x = batch(64, 256, dev);
  const int64_t act0 = activation_now(dev);
  Tensor plain_loss = model->forward(x).pow(2.0).mean();
  const int64_t plain = activation_now(dev) - act0;
  plain_loss = Tensor();
  x = batch(64, 256, dev);  // a fresh input: the old one was retagged activation when saved
  ASSERT_EQ(activation_now(dev), act0);

  CachingAllocator& pool = host_pool();
  const int64_t pool0 = pool.stats().allocated_bytes.current;
  const int64_t pool_act0 = pool.stats().category(MemoryCategory::activation).current;
  Tensor loss;
  {
    ActivationOffload offload({.min_bytes = 32 << 10});
    loss = model->forward(x).pow(2.0).mean();
    const ActivationOffloadStats s = offload.stats();
    EXPECT_GT(s.kept_on_device, 0);        // the loss's scalars
    EXPECT_EQ(s.bytes, 5 * 64 * 256 * 4);  // the input and four ReLU outputs
  }
  const int64_t offloaded = pool.stats().allocated_bytes.current - pool0;
  EXPECT_EQ(pool.stats().category(MemoryCategory::activation).current - pool_act0, offloaded);
  EXPECT_EQ(offloaded, 5 * 64 * 256 * 4);
  EXPECT_EQ(plain - (activation_now(dev) - act0), offloaded);
  loss.backward();
  EXPECT_EQ(pool.stats().allocated_bytes.current, pool0);  // the host copies are gone with the graph
}

TEST(ActivationOffload, ALimitThatStopsThePlainStepIsMetWithOffload) {
  const Device measure = Device::cpu(6);
  auto step = [](nn::Module& model, const Tensor& x, bool offload) {
    model.zero_grad();
    Tensor loss;
    if (offload) {
      ActivationOffload scope({.min_bytes = 0, .segment_bytes = 0});
      loss = model.forward(x).pow(2.0).mean();
    } else {
      loss = model.forward(x).pow(2.0).mean();
    }
    loss.backward();
  };
  auto peak_of = [&](bool offload) {
    CachingAllocator& a = caching_allocator(measure);
    auto model = mlp(128, 8, measure);
    Tensor x = batch(2048, 128, measure);
    a.empty_cache();
    a.reset_peak_stats();
    step(*model, x, offload);
    return a.stats().allocated_bytes.peak;
  };
  const int64_t plain_peak = peak_of(false), offload_peak = peak_of(true);
  ASSERT_LT(offload_peak * 10, plain_peak * 7) << "offload should save at least 30% here";

  const Device dev = Device::cpu(7);
  CachingAllocator& a = caching_allocator(dev);
  auto model = mlp(128, 8, dev);
  Tensor x = batch(2048, 128, dev);
  a.set_memory_limit(static_cast<size_t>(a.stats().reserved_bytes.current + (offload_peak + plain_peak) / 2 -
                                         a.stats().allocated_bytes.current));
  EXPECT_THROW(step(*model, x, false), OutOfMemoryError);
  a.empty_cache();
  EXPECT_NO_THROW(step(*model, x, true));
  a.set_memory_limit(0);
  auto reference = mlp(128, 8, measure);
  step(*reference, batch(2048, 128, measure), false);
  EXPECT_EQ(grad_bits(*model), grad_bits(*reference));
}

TEST(ActivationOffload, OffloadsTheCheckpointsThemselves) {
  const Device dev = Device::cpu(5);
  auto plain_model = mlp(256, 6, dev);
  Tensor x = batch(64, 256, dev);
  plain_model->forward(x).pow(2.0).mean().backward();
  const auto plain = grad_bits(*plain_model);

  auto model = mlp(256, 6, dev);
  std::vector<std::shared_ptr<nn::Module>> layers;
  for (int64_t i = 0; i < model->size(); ++i) layers.push_back(model->at(i));
  ActivationOffloadStats s;
  Tensor loss;
  {
    ActivationOffload offload({.min_bytes = 0, .segment_bytes = 0});
    loss = nn::checkpoint_sequential(layers, x, 3).pow(2.0).mean();
    s = offload.stats();
  }
  loss.backward();
  EXPECT_EQ(grad_bits(*model), plain);
  // Two checkpoints save their inputs; the last segment runs plainly and saves its own.
  EXPECT_GE(s.storages, 2);
  EXPECT_LT(s.storages, 8);
}

TEST(ActivationOffload, TheVersionCheckHoldsAcrossOffload) {
  const Device dev = Device::cpu(5);
  Tensor w = Tensor::randn({64, 64}, TensorOptions().device(dev).requires_grad(true));
  Tensor x = Tensor::randn({64, 64}, TensorOptions().device(dev));
  Tensor y;
  {
    ActivationOffload offload({.min_bytes = 0});
    y = matmul(x, w).sum();
  }
  x.add_(Tensor::scalar(1.0, TensorOptions().device(dev)));
  EXPECT_THROW_WITH(y.backward(), AutogradError, "modified in place");
}

TEST(ActivationOffload, RetainGraphKeepsNoDeviceCopies) {
  const Device dev = Device::cpu(5);
  auto model = mlp(128, 3, dev);
  Tensor x = batch(32, 128, dev);
  Tensor loss;
  {
    ActivationOffload offload({.min_bytes = 0, .segment_bytes = 0});
    loss = model->forward(x).pow(2.0).mean();
  }
  const int64_t before = activation_now(dev);
  loss.backward(Tensor(), /*retain_graph=*/true);
  EXPECT_EQ(activation_now(dev), before);
  const auto once = grad_bits(*model);
  loss.backward();
  const auto twice = grad_bits(*model);
  ASSERT_EQ(once.size(), twice.size());
  EXPECT_NE(once, twice);  // accumulated a second time
}

TEST(ActivationOffload, MetaExecutionPredictsBothSides) {
  int64_t device_act = 0, host_act = 0;
  {
    MetaScope meta;
    auto model = mlp(256, 4, Device::cpu());
    Tensor x = batch(64, 256, Device::cpu());
    ActivationOffload offload({.min_bytes = 32 << 10});
    Tensor loss = model->forward(x).pow(2.0).mean();
    device_act = meta.allocator(Device::cpu()).stats().category(MemoryCategory::activation).current;
    host_act = meta.host_pool().stats().category(MemoryCategory::activation).current;
  }
  EXPECT_EQ(host_act, 5 * 64 * 256 * 4);
  EXPECT_LT(device_act, 4096);
}

}  // namespace
}  // namespace headroom

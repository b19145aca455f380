// Optimizer offload (Note [optimizer offload]): five AdamW steps with the state on the host give
// the parameters of AdamW on the device, bit for bit (f32, the same fused kernel), with no
// optimizer state on the device; gradients are staged by the backward hooks, again at step()
// when changed since (clipping); a failure in the host pool changes nothing and the retry
// gives the same result; checkpoints move between AdamW and OffloadedAdamW.
#include <cstring>

#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

std::shared_ptr<nn::Sequential> mlp(Device device) {
  manual_seed(21);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 96), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(96, 96),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(96, 10)});
  model->to(device);
  return model;
}

Tensor loss_of(nn::Module& model, int step, Device device) {
  manual_seed(100 + step);
  Tensor x = Tensor::randn({32, 64}, TensorOptions().device(device));
  return model.forward(x).pow(2.0).mean();
}

std::vector<std::vector<uint32_t>> bits(const nn::Module& m) {
  std::vector<std::vector<uint32_t>> out;
  for (const Tensor& p : m.parameters()) {
    const std::vector<float> v = p.contiguous().to_vector<float>();
    std::vector<uint32_t> b(v.size());
    std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
    out.push_back(std::move(b));
  }
  return out;
}

int64_t state_bytes(Device d) { return caching_allocator(d).stats().category(MemoryCategory::optimizer_state).current; }

void train(nn::Module& model, optim::Optimizer& opt, Device device, int steps, bool clip = false) {
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    loss_of(model, s, device).backward();
    if (clip) optim::clip_grad_norm_(model.parameters(), 0.05);
    opt.step();
  }
}

TEST(OffloadedAdamW, FiveStepsEqualAdamWOnTheDeviceBitForBit) {
  const Device ref_dev = Device::cpu(3), dev = Device::cpu(4);
  auto reference = mlp(ref_dev);
  optim::AdamW ref_opt(reference->parameters(), 1e-2, 0.9, 0.999, 1e-8, 0.05);
  train(*reference, ref_opt, ref_dev, 5);

  auto model = mlp(dev);
  const int64_t device_state0 = state_bytes(dev);
  CachingAllocator& pool = host_pool();
  const int64_t pool_state0 = pool.stats().category(MemoryCategory::optimizer_state).current;
  optim::OffloadedAdamW opt(model->parameters(), 1e-2, 0.9, 0.999, 1e-8, 0.05);
  train(*model, opt, dev, 5);
  EXPECT_EQ(bits(*model), bits(*reference));   // tolerance 0
  EXPECT_EQ(state_bytes(dev), device_state0);  // no optimizer state on the device
  EXPECT_GT(ref_opt.state_nbytes(), 0u);
  // The host holds the two moments and an f32 master copy of each parameter.
  int64_t expected = 0;
  for (const Tensor& p : model->parameters()) expected += 3 * ((static_cast<int64_t>(p.nbytes()) + 511) / 512 * 512);
  EXPECT_EQ(pool.stats().category(MemoryCategory::optimizer_state).current - pool_state0, expected);
  for (size_t i = 0; i < model->parameters().size(); ++i) {
    EXPECT_EQ(opt.step_count(i), 5);
    EXPECT_TRUE(opt.exp_avg(i).is_pinned());
    EXPECT_TRUE(testing::all_close(opt.exp_avg(i), ref_opt.exp_avg(i).to(Device::cpu()), 0, 0));
  }
  // Every gradient went down from backward's hooks; step() had nothing left to copy.
  EXPECT_EQ(opt.gradients_staged_in_backward(), 5 * static_cast<int64_t>(model->parameters().size()));
  EXPECT_EQ(opt.gradients_staged_in_step(), 0);
}

TEST(OffloadedAdamW, GradientsChangedAfterBackwardAreStagedAgain) {
  const Device ref_dev = Device::cpu(3), dev = Device::cpu(4);
  auto reference = mlp(ref_dev);
  optim::AdamW ref_opt(reference->parameters(), 1e-2);
  train(*reference, ref_opt, ref_dev, 3, /*clip=*/true);
  auto model = mlp(dev);
  optim::OffloadedAdamW opt(model->parameters(), 1e-2);
  train(*model, opt, dev, 3, /*clip=*/true);
  EXPECT_EQ(bits(*model), bits(*reference));
  EXPECT_EQ(opt.gradients_staged_in_step(), 3 * static_cast<int64_t>(model->parameters().size()));
}

TEST(OffloadedAdamW, AFailureInTheHostPoolChangesNothingAndTheRetryMatches) {
  const Device ref_dev = Device::cpu(3), dev = Device::cpu(4);
  auto reference = mlp(ref_dev);
  optim::AdamW ref_opt(reference->parameters(), 1e-2);
  train(*reference, ref_opt, ref_dev, 2);

  auto model = mlp(dev);
  optim::OffloadedAdamW opt(model->parameters(), 1e-2);
  CachingAllocator& pool = host_pool();
  opt.zero_grad();
  loss_of(*model, 0, dev).backward();  // gradients staged: the pool's next requests are the state's
  const auto before = bits(*model);
  const int64_t pool_before = pool.stats().allocated_bytes.current;
  for (int64_t k = 1; k <= 6; ++k) {
    pool.inject_fault(FaultKind::allocation, k);
    EXPECT_THROW(opt.step(), OutOfMemoryError) << "allocation " << k;
    pool.clear_fault();
    EXPECT_EQ(bits(*model), before);
    EXPECT_EQ(pool.stats().allocated_bytes.current, pool_before) << "allocation " << k;
    for (size_t i = 0; i < model->parameters().size(); ++i) EXPECT_EQ(opt.step_count(i), 0);
  }
  opt.step();
  opt.zero_grad();
  loss_of(*model, 1, dev).backward();
  opt.step();
  EXPECT_EQ(bits(*model), bits(*reference));
}

TEST(OffloadedAdamW, CheckpointsMoveBetweenAdamWAndOffloadedAdamW) {
  const Device dev = Device::cpu(4);
  auto a = mlp(dev);
  optim::OffloadedAdamW offloaded(a->parameters(), 1e-2);
  train(*a, offloaded, dev, 2);
  auto b = mlp(dev);
  b->load_state_dict(a->state_dict());
  optim::AdamW plain(b->parameters(), 1e-2);
  plain.load_state_dict(offloaded.state_dict());
  auto c = mlp(dev);
  c->load_state_dict(a->state_dict());
  optim::OffloadedAdamW back(c->parameters(), 1e-2);
  back.load_state_dict(plain.state_dict());
  EXPECT_TRUE(back.exp_avg(0).is_pinned());
  for (int s = 2; s < 4; ++s) {
    for (auto [m, o] :
         {std::pair<nn::Module*, optim::Optimizer*>{a.get(), &offloaded}, {b.get(), &plain}, {c.get(), &back}}) {
      o->zero_grad();
      loss_of(*m, s, dev).backward();
      o->step();
    }
  }
  EXPECT_EQ(bits(*a), bits(*b));
  EXPECT_EQ(bits(*a), bits(*c));
}

TEST(OffloadedAdamW, RefusesBadHyperparameters) {
  auto model = mlp(Device::cpu(4));
  EXPECT_THROW_WITH(optim::OffloadedAdamW(model->parameters(), 1e-3, 1.5), ValueError, "betas");
  EXPECT_THROW_WITH(optim::OffloadedAdamW(model->parameters(), 1e-3, 0.9, 0.999, -1), ValueError, "eps");
}

}  // namespace
}  // namespace headroom

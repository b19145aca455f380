// Meta execution (Note [meta execution], engine/meta.h): a training step run inside a MetaScope
// -- model, optimizer and data made there too -- predicts the step's peak allocated bytes on
// the CPU to the byte, per category, and its peak reserved within 2%, for an MLP, a CNN with
// BatchNorm, a GPT (f32 and bf16 autocast, each checkpoint policy) and BatchSplitter
// micro-batches; and no data is touched.
#include <cstdio>
#include <functional>

#include "autograd/autocast.h"
#include "engine/meta.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::tokens;

struct Footprint {
  int64_t allocated_peak = 0, reserved_peak = 0;
  std::array<int64_t, kNumMemoryCategories> category_peak{};
};

Footprint footprint(const MemoryStats& after, const MemoryStats& before) {
  Footprint f;
  f.allocated_peak = after.allocated_bytes.peak - before.allocated_bytes.current;
  f.reserved_peak = after.reserved_bytes.peak - before.reserved_bytes.current;
  for (size_t c = 0; c < kNumMemoryCategories; ++c)
    f.category_peak[c] = after.category_bytes[c].peak - before.category_bytes[c].current;
  return f;
}

// The step for real, on the cpu's own allocator emptied first.
Footprint measured(const std::function<void()>& step) {
  CachingAllocator& a = caching_allocator(Device::cpu());
  a.empty_cache();
  a.reset_peak_stats();
  const MemoryStats before = a.stats();
  step();
  return footprint(a.stats(), before);
}

Footprint predicted(const std::function<void()>& step) {
  MetaScope meta;
  CachingAllocator& a = meta.allocator(Device::cpu());
  const MemoryStats before = a.stats();
  step();
  return footprint(a.stats(), before);
}

void expect_exact(const char* what, const std::function<void()>& step) {
  const Footprint real = measured(step);
  const Footprint meta = predicted(step);
  EXPECT_GT(real.allocated_peak, 0) << what;
  EXPECT_EQ(meta.allocated_peak, real.allocated_peak) << what;
  for (size_t c = 0; c < kNumMemoryCategories; ++c)
    EXPECT_EQ(meta.category_peak[c], real.category_peak[c])
        << what << ": category " << category_name(static_cast<MemoryCategory>(c));
  EXPECT_NEAR(static_cast<double>(meta.reserved_peak), static_cast<double>(real.reserved_peak),
              0.02 * static_cast<double>(real.reserved_peak))
      << what;
  std::printf("%s: peak allocated %lld predicted, %lld measured; reserved %lld / %lld\n", what,
              static_cast<long long>(meta.allocated_peak), static_cast<long long>(real.allocated_peak),
              static_cast<long long>(meta.reserved_peak), static_cast<long long>(real.reserved_peak));
}

nn::GPTConfig small_gpt(nn::CheckpointMode mode) {
  nn::GPTConfig cfg;
  cfg.vocab_size = 64;
  cfg.block_size = 32;
  cfg.n_layer = 3;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  cfg.dropout = 0.1;
  cfg.attention = AttentionImpl::fused;
  cfg.checkpoint = mode;
  return cfg;
}

void gpt_step(nn::CheckpointMode mode, bool bf16, int64_t micro_batches = 1) {
  manual_seed(5);
  nn::GPT gpt(small_gpt(mode));
  optim::AdamW opt(gpt.parameters(), 1e-3);
  Tensor idx = tokens({4, 32}, 64, 1), targets = tokens({4, 32}, 64, 2);
  std::optional<AutocastGuard> amp;
  if (bf16) amp.emplace(Device::cpu(), DType::bf16);
  if (micro_batches > 1) {
    optim::BatchSplitter splitter(opt, micro_batches, &gpt);
    splitter.step(idx, targets,
                  [&](const Tensor& x, const Tensor& y) { return optim::MicroBatchOutput(gpt.loss(x, y)); });
    return;
  }
  opt.zero_grad();
  Tensor loss = gpt.loss(idx, targets);
  loss.backward();
  opt.step();
}

TEST(Meta, PredictsAnMlpStepToTheByte) {
  expect_exact("mlp", [] {
    manual_seed(3);
    nn::Sequential net({std::make_shared<nn::Linear>(64, 128), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(128, 128), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(128, 10)});
    optim::SGD opt(net.parameters(), 0.1, 0.9);
    for (int step = 0; step < 2; ++step) {
      opt.zero_grad();
      Tensor loss = cross_entropy(net.forward(Tensor::randn({32, 64})), tokens({32}, 10, 3));
      loss.backward();
      opt.step();
    }
  });
}

TEST(Meta, PredictsACnnWithBatchNormToTheByte) {
  expect_exact("cnn", [] {
    manual_seed(4);
    nn::Sequential net({std::make_shared<nn::Conv2d>(1, 8, 3, 1, 1), std::make_shared<nn::BatchNorm2d>(8),
                        std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
                        std::make_shared<nn::Conv2d>(8, 16, 3, 1, 1), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(16 * 7 * 7, 10)});
    optim::SGD opt(net.parameters(), 0.05, 0.9);
    opt.zero_grad();
    Tensor loss = cross_entropy(net.forward(Tensor::randn({16, 1, 14, 14})), tokens({16}, 10, 4));
    loss.backward();
    opt.step();
  });
}

TEST(Meta, PredictsAGptStepToTheByteWithEachCheckpointPolicy) {
  for (nn::CheckpointMode mode :
       {nn::CheckpointMode::none, nn::CheckpointMode::block, nn::CheckpointMode::sqrt, nn::CheckpointMode::selective})
    expect_exact(str_cat("gpt f32 ", nn::checkpoint_mode_name(mode)).c_str(), [mode] { gpt_step(mode, false); });
}

TEST(Meta, PredictsBf16AutocastAndMicroBatches) {
  expect_exact("gpt bf16", [] { gpt_step(nn::CheckpointMode::none, true); });
  expect_exact("gpt bf16 block", [] { gpt_step(nn::CheckpointMode::block, true); });
  expect_exact("gpt f32, 2 micro-batches", [] { gpt_step(nn::CheckpointMode::none, false, 2); });
}

// The bench's small GPT (17 MiB at its peak): large-pool segments, so reserved bytes are
// predicted through splitting and caching too.
TEST(Meta, PredictsTheBenchsSmallGptIncludingItsLargeSegments) {
  for (bool bf16 : {false, true})
    expect_exact(bf16 ? "gpt-tiny bf16" : "gpt-tiny f32", [bf16] {
      manual_seed(6);
      nn::GPTConfig cfg;
      cfg.vocab_size = 512;
      cfg.block_size = 128;
      cfg.n_layer = 2;
      cfg.n_head = 4;
      cfg.n_embd = 128;
      nn::GPT gpt(cfg);
      optim::AdamW opt(gpt.parameters(), 3e-4);
      Tensor idx = tokens({4, 128}, 512, 1), targets = tokens({4, 128}, 512, 2);
      std::optional<AutocastGuard> amp;
      if (bf16) amp.emplace(Device::cpu(), DType::bf16);
      for (int step = 0; step < 2; ++step) {
        opt.zero_grad();
        Tensor loss = gpt.loss(idx, targets);
        loss.backward();
        opt.step();
      }
    });
}

TEST(Meta, MetaTensorsHaveNoDataAndReadsAreZeros) {
  Tensor kept;
  {
    MetaScope meta;
    Tensor x = Tensor::ones({4, 4});
    EXPECT_TRUE(x.is_meta());
    EXPECT_EQ(sum(x * 3.0).item<double>(), 0.0);  // no kernel ran: reads are zeros
    EXPECT_EQ(x.to_vector<float>(), std::vector<float>(16, 0.0f));
    EXPECT_EQ(meta.allocator(Device::cpu()).stats().allocated_bytes.current,
              512);  // x (64 B in a 512 B block), nothing else alive
    EXPECT_THROW_WITH(MetaScope(), ValueError, "already open");
    kept = x;
  }
  EXPECT_FALSE(Tensor::ones({2}).is_meta());
  EXPECT_THROW_WITH(kept.raw_data(), DeviceError, "meta tensor (4, 4) f32");
  EXPECT_THROW_WITH(kept.item<float>(), ShapeError, "one element");
  EXPECT_THROW_WITH(kept + 1.0, DeviceError, "meta tensor");  // a kernel outside the scope refuses it
}

}  // namespace
}  // namespace headroom

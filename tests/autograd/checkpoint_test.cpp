// Recompute checkpointing (Note [recompute checkpointing], Note [recompute state]): gradients
// bit-identical to no checkpointing for a GPT with dropout, a CNN with BatchNorm (running
// statistics too) and under bf16 autocast; the determinism check; nesting, retain_graph,
// BatchSplitter with a GradScaler; and the memory the policies save, in allocator bytes.
#include <cstdio>

#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::tokens;

std::vector<float> f32_values(const Tensor& t) { return t.to(DType::f32).contiguous().to_vector<float>(); }

nn::GPTConfig tiny_gpt(int64_t layers, double dropout) {
  nn::GPTConfig cfg;
  cfg.vocab_size = 64;
  cfg.block_size = 16;
  cfg.n_layer = layers;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  cfg.dropout = dropout;
  return cfg;
}

// Every parameter's gradient and every buffer, as bytes-exact floats, after one training step's
// forward and backward; and the generator's offset after it.
struct Result {
  std::vector<std::vector<float>> grads, buffers;
  float loss = 0;
  uint64_t rng_offset = 0;
};

Result gpt_step(nn::CheckpointMode mode, double dropout, bool bf16 = false) {
  manual_seed(11);
  nn::GPTConfig cfg = tiny_gpt(4, dropout);
  cfg.checkpoint = mode;
  nn::GPT gpt(cfg);
  Tensor idx = tokens({2, 16}, 64, 1), targets = tokens({2, 16}, 64, 2);
  Tensor loss;
  if (bf16) {
    AutocastGuard amp(Device::cpu(), DType::bf16);
    loss = gpt.loss(idx, targets);
  } else {
    loss = gpt.loss(idx, targets);
  }
  loss.backward();
  Result r;
  r.loss = loss.item<float>();
  for (const Tensor& p : gpt.parameters()) r.grads.push_back(f32_values(p.grad()));
  r.rng_offset = default_generator().offset();
  return r;
}

TEST(Checkpoint, GptWithDropoutGivesBitIdenticalGradientsPerBlockAndSqrt) {
  const Result plain = gpt_step(nn::CheckpointMode::none, 0.1);
  reset_checkpoint_stats();
  const Result block = gpt_step(nn::CheckpointMode::block, 0.1);
  const CheckpointStats st = checkpoint_stats();
  EXPECT_EQ(st.segments, 4);
  EXPECT_EQ(st.recomputations, 4);
  EXPECT_GT(st.dropped, 0);
  EXPECT_EQ(st.recomputed, st.dropped);  // every dropped tensor was needed and recomputed once
  const Result sqrt_mode = gpt_step(nn::CheckpointMode::sqrt, 0.1);
  reset_checkpoint_stats();
  const Result selective = gpt_step(nn::CheckpointMode::selective, 0.1);
  const CheckpointStats sel = checkpoint_stats();
  // Per block: c_attn, c_proj, c_fc, c_proj (linear) and the fused attention kept; each re-run
  // skipped them all (Note [selective checkpointing]).
  EXPECT_EQ(sel.kept_by_op.at("linear").first, 4 * 4);
  EXPECT_EQ(sel.kept_by_op.at("scaled_dot_product_attention (fused)").first, 4);
  EXPECT_EQ(sel.replayed, sel.kept_outputs);
  EXPECT_EQ(sel.dropped, st.dropped);  // every saved tensor is still dropped: the kept outputs stand in for them
  const std::string text = describe(sel);
  EXPECT_NE(text.find("4 segments"), std::string::npos) << text;
  EXPECT_NE(text.find("linear 16 x"), std::string::npos) << text;
  for (const Result* r : {&block, &sqrt_mode, &selective}) {
    EXPECT_EQ(r->loss, plain.loss);
    ASSERT_EQ(r->grads.size(), plain.grads.size());
    for (size_t i = 0; i < plain.grads.size(); ++i) EXPECT_EQ(r->grads[i], plain.grads[i]) << "parameter " << i;
    EXPECT_EQ(r->rng_offset, plain.rng_offset);  // the re-runs' draws were put back
  }
}

// Without dropout nothing after a block's last linear (the MLP's c_proj) saves anything, so no
// re-run would ask for its output: it is released when the block's forward returns instead of
// being held until backward (Note [selective checkpointing]). With dropout its mask is saved
// after it, and it is kept (the test above).
TEST(Checkpoint, SelectiveReleasesOutputsNoRecomputationNeeds) {
  const Result plain = gpt_step(nn::CheckpointMode::none, 0.0);
  reset_checkpoint_stats();
  const Result selective = gpt_step(nn::CheckpointMode::selective, 0.0);
  const CheckpointStats sel = checkpoint_stats();
  EXPECT_EQ(sel.kept_by_op.at("linear").first, 4 * 3);
  EXPECT_EQ(sel.released_outputs, 4);
  EXPECT_EQ(sel.released_output_bytes, 4 * (2 * 16 * 32 * 4));  // 4 x [B*T, C] f32
  EXPECT_EQ(sel.replayed, sel.kept_outputs);
  const std::string text = describe(sel);
  EXPECT_NE(text.find("released 4 op outputs no re-run needs (16.0 KiB)"), std::string::npos) << text;
  EXPECT_EQ(selective.loss, plain.loss);
  for (size_t i = 0; i < plain.grads.size(); ++i) EXPECT_EQ(selective.grads[i], plain.grads[i]) << "parameter " << i;

  // The smallest case: linear -> gelu -> linear. The first output is gelu's saved input (kept);
  // the second is saved by nothing (released), and its memory is free once the caller drops it.
  manual_seed(3);
  Tensor x = Tensor::randn({8, 16}), w1 = Tensor::randn({32, 16}), w2 = Tensor::randn({16, 32});
  w1.set_requires_grad(true);
  w2.set_requires_grad(true);
  auto fn = [&](const std::vector<Tensor>& in) -> std::vector<Tensor> {
    return {linear(gelu(linear(in[0], w1, Tensor())), w2, Tensor())};
  };
  reset_checkpoint_stats();
  Tensor y = checkpoint(fn, {x}, selective_checkpoint_options()).front();
  EXPECT_EQ(checkpoint_stats().kept_outputs, 1);
  EXPECT_EQ(checkpoint_stats().kept_output_bytes, 8 * 32 * 4);
  EXPECT_EQ(checkpoint_stats().released_outputs, 1);
  sum(y).backward();
  const std::vector<float> g1 = f32_values(w1.grad()), g2 = f32_values(w2.grad());
  w1.zero_grad();
  w2.zero_grad();
  sum(fn({x}).front()).backward();
  EXPECT_EQ(f32_values(w1.grad()), g1);
  EXPECT_EQ(f32_values(w2.grad()), g2);
}
TEST(Checkpoint, Bf16AutocastGivesBitIdenticalGradients) {
  const Result plain = gpt_step(nn::CheckpointMode::none, 0.1, true);
  for (nn::CheckpointMode mode : {nn::CheckpointMode::block, nn::CheckpointMode::selective}) {
    const Result r = gpt_step(mode, 0.1, true);
    EXPECT_EQ(r.loss, plain.loss);
    for (size_t i = 0; i < plain.grads.size(); ++i)
      EXPECT_EQ(r.grads[i], plain.grads[i]) << "parameter " << i << ", " << nn::checkpoint_mode_name(mode);
  }
}

// A CNN with BatchNorm: gradients, running statistics and the batch counter equal with every
// stage checkpointed (the re-run must not update the running statistics a second time).
Result cnn_step(nn::CheckpointMode mode) {
  manual_seed(5);
  auto stage = [](int64_t in, int64_t out) {
    return std::make_shared<nn::Sequential>(
        std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Conv2d>(in, out, 3, 1, 1),
                                                 std::make_shared<nn::BatchNorm2d>(out), std::make_shared<nn::ReLU>()});
  };
  std::vector<std::shared_ptr<nn::Module>> stages{stage(1, 4), stage(4, 4), stage(4, 4)};
  nn::Sequential model(stages);
  nn::Linear head(4 * 6 * 6, 10);
  Tensor images = Tensor::randn({4, 1, 6, 6}), labels = tokens({4}, 10, 3);
  Tensor h = nn::run_checkpointed(stages, images, mode);
  Tensor loss = cross_entropy(head.forward(h.reshape({4, 4 * 6 * 6})), labels);
  loss.backward();
  Result r;
  r.loss = loss.item<float>();
  for (const Tensor& p : model.parameters()) r.grads.push_back(f32_values(p.grad()));
  for (const Tensor& b : model.buffers()) r.buffers.push_back(f32_values(b));
  return r;
}

TEST(Checkpoint, CnnWithBatchNormUpdatesRunningStatisticsOnce) {
  const Result plain = cnn_step(nn::CheckpointMode::none);
  for (nn::CheckpointMode mode : {nn::CheckpointMode::block, nn::CheckpointMode::sqrt, nn::CheckpointMode::selective}) {
    const Result ckpt = cnn_step(mode);
    const char* name = nn::checkpoint_mode_name(mode);
    EXPECT_EQ(ckpt.loss, plain.loss) << name;
    for (size_t i = 0; i < plain.grads.size(); ++i)
      EXPECT_EQ(ckpt.grads[i], plain.grads[i]) << "parameter " << i << ", " << name;
    ASSERT_EQ(ckpt.buffers.size(), plain.buffers.size());
    for (size_t i = 0; i < plain.buffers.size(); ++i)
      EXPECT_EQ(ckpt.buffers[i], plain.buffers[i]) << "buffer " << i << ", " << name;
  }
  EXPECT_EQ(plain.buffers[2], std::vector<float>{1.0f});  // num_batches_tracked: one forward
}

TEST(Checkpoint, NestedCheckpointsGiveTheSameGradients) {
  manual_seed(2);
  nn::Linear a(8, 8), b(8, 8), c(8, 8);
  Tensor x = Tensor::randn({3, 8}).set_requires_grad();
  auto f = [&](const Tensor& in) { return tanh(c.forward(tanh(b.forward(tanh(a.forward(in)))))); };
  f(x).sum().backward();
  std::vector<std::vector<float>> want{f32_values(x.grad()), f32_values(a.weight.grad()), f32_values(c.weight.grad())};
  x.zero_grad();
  a.zero_grad();
  b.zero_grad();
  c.zero_grad();
  reset_checkpoint_stats();
  Tensor y = checkpoint(
      [&](const Tensor& in) {
        Tensor h = tanh(a.forward(in));
        h = checkpoint([&](const Tensor& u) { return tanh(b.forward(u)); }, h);
        return tanh(c.forward(h));
      },
      x);
  y.sum().backward();
  EXPECT_EQ(f32_values(x.grad()), want[0]);
  EXPECT_EQ(f32_values(a.weight.grad()), want[1]);
  EXPECT_EQ(f32_values(c.weight.grad()), want[2]);
  EXPECT_GE(checkpoint_stats().recomputations, 2);
}

TEST(Checkpoint, RetainGraphRecomputesForEachBackwardAndKeepsNothing) {
  manual_seed(4);
  nn::Linear a(8, 8);
  Tensor x = Tensor::randn({3, 8});
  auto f = [&](const Tensor& in) { return exp(tanh(a.forward(in)) * 0.5); };
  f(x).sum().backward();
  const std::vector<float> once = f32_values(a.weight.grad());
  a.zero_grad();
  reset_checkpoint_stats();
  Tensor loss = checkpoint(f, x).sum();
  loss.backward(Tensor(), true);
  EXPECT_EQ(f32_values(a.weight.grad()), once);
  loss.backward();
  EXPECT_EQ(checkpoint_stats().recomputations, 2);
  std::vector<float> twice = once;
  for (float& v : twice) v += v;
  EXPECT_EQ(f32_values(a.weight.grad()), twice);
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "a second time");
}

TEST(Checkpoint, InputsWithoutGradAndNoGradMode) {
  manual_seed(6);
  nn::Linear a(4, 4);
  Tensor x = Tensor::randn({2, 4});  // data: no grad
  Tensor y = checkpoint([&](const Tensor& in) { return tanh(a.forward(in)); }, x);
  EXPECT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(a.weight.grad().defined());
  reset_checkpoint_stats();
  {
    NoGradGuard no_grad;
    Tensor z = checkpoint([&](const Tensor& in) { return tanh(a.forward(in)); }, x);
    EXPECT_FALSE(z.requires_grad());
  }
  EXPECT_EQ(checkpoint_stats().segments, 0);
}

// The re-run must do what the forward did; a function reading a global that changed is caught.
bool use_exp = true;
int64_t extra = 0;

TEST(Checkpoint, TheDeterminismCheckNamesTheOpsThatDiffer) {
  Tensor x = Tensor::randn({3, 4}).set_requires_grad();
  use_exp = true;
  Tensor y = checkpoint([](const Tensor& in) { return (use_exp ? exp(in * 2.0) : tanh(in * 2.0)).sum(); }, x);
  use_exp = false;
  EXPECT_THROW_WITH(y.backward(), AutogradError, "'exp' saved f32 (3, 4) on cpu in the forward but 'tanh' saved");

  extra = 1;
  Tensor z = checkpoint(
      [](const Tensor& in) {
        Tensor h = in;
        for (int64_t i = 0; i <= extra; ++i) h = exp(h * 0.5);
        return h.sum();
      },
      x);
  extra = 0;  // the re-run saves fewer tensors than the forward did
  EXPECT_THROW_WITH(z.backward(), AutogradError,
                    "the recomputation saved 2 tensors for backward but the forward saved 4");
}

TEST(Checkpoint, BadUseGetsClearErrors) {
  Tensor x = Tensor::randn({2}).set_requires_grad();
  EXPECT_THROW_WITH(checkpoint([](const std::vector<Tensor>&) { return std::vector<Tensor>{}; }, {x}), ValueError,
                    "returned no tensor");
  EXPECT_THROW_WITH(checkpoint(CheckpointFn(), {x}), ValueError, "empty");
  nn::Linear a(2, 2);
  EXPECT_THROW_WITH(nn::checkpoint_sequential({nullptr}, x), ValueError, "module 0 is null");
  std::vector<std::shared_ptr<nn::Module>> mods{std::make_shared<nn::ReLU>()};
  EXPECT_THROW_WITH(nn::checkpoint_sequential(mods, x, 2), ValueError, "2 segments for 1 modules");
  EXPECT_THROW_WITH(nn::parse_checkpoint_mode("blocks", "--checkpoint"), ValueError,
                    "unknown checkpointing mode 'blocks'");
  EXPECT_EQ(nn::parse_checkpoint_mode("sqrt", "--checkpoint"), nn::CheckpointMode::sqrt);
}

TEST(Checkpoint, InPlaceChangeOfACheckpointedInputIsCaught) {
  nn::Linear a(3, 3);
  Tensor x = Tensor::randn({2, 3});
  Tensor y = checkpoint([&](const Tensor& in) { return tanh(a.forward(in)); }, x);
  x.mul_(2.0);
  EXPECT_THROW_WITH(y.sum().backward(), AutogradError, "backward of checkpoint");
}

TEST(Checkpoint, WorksUnderBatchSplitterWithAGradScaler) {
  auto run = [](nn::CheckpointMode mode) {
    manual_seed(8);
    nn::GPTConfig cfg = tiny_gpt(2, 0.1);
    cfg.checkpoint = mode;
    auto gpt = std::make_shared<nn::GPT>(cfg);
    optim::SGD opt(gpt->parameters(), 0.1);
    optim::GradScaler scaler;
    optim::BatchSplitter::Options o;
    o.scaler = &scaler;
    optim::BatchSplitter splitter(opt, 2, gpt.get(), o);
    Tensor idx = tokens({4, 16}, 64, 1), targets = tokens({4, 16}, 64, 2);
    splitter.step(idx, targets,
                  [&](const Tensor& x, const Tensor& y) { return optim::MicroBatchOutput(gpt->loss(x, y)); });
    std::vector<std::vector<float>> params;
    for (const Tensor& p : gpt->parameters()) params.push_back(f32_values(p));
    return params;
  };
  EXPECT_EQ(run(nn::CheckpointMode::block), run(nn::CheckpointMode::none));
}

// ---- memory ----

struct Peaks {
  int64_t activation_after_forward = 0;  // activation bytes alive once the loss exists
  int64_t activation_peak = 0;           // through forward and backward
  int64_t gradient_peak = 0;
  int64_t allocated_peak = 0;
};

Peaks measure(const std::function<Tensor()>& forward) {
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  alloc.reset_peak_stats();
  const MemoryStats s0 = alloc.stats();
  Tensor loss = forward();
  const MemoryStats s1 = alloc.stats();
  loss.backward();
  const MemoryStats s2 = alloc.stats();
  Peaks p;
  p.activation_after_forward =
      s1.category(MemoryCategory::activation).current - s0.category(MemoryCategory::activation).current;
  p.activation_peak = s2.category(MemoryCategory::activation).peak - s0.category(MemoryCategory::activation).current;
  p.gradient_peak = s2.category(MemoryCategory::gradient).peak - s0.category(MemoryCategory::gradient).current;
  p.allocated_peak = s2.allocated_bytes.peak - s0.allocated_bytes.current;
  return p;
}

Peaks gpt_peaks(int64_t layers, nn::CheckpointMode mode) {
  manual_seed(12);
  nn::GPTConfig cfg = tiny_gpt(layers, 0.1);
  cfg.checkpoint = mode;
  nn::GPT gpt(cfg);
  Tensor idx = tokens({2, 16}, 64, 1), targets = tokens({2, 16}, 64, 2);
  return measure([&] { return gpt.loss(idx, targets); });
}

TEST(CheckpointMemory, PerBlockHoldsTheBlockInputsPlusOneBlocksActivations) {
  const int64_t block_input = 2 * 16 * 32 * 4;  // [B, T, C] f32: 4 KiB, a multiple of the rounding
  const Peaks none2 = gpt_peaks(2, nn::CheckpointMode::none), none4 = gpt_peaks(4, nn::CheckpointMode::none);
  const Peaks blk2 = gpt_peaks(2, nn::CheckpointMode::block), blk4 = gpt_peaks(4, nn::CheckpointMode::block);
  const Peaks sel4 = gpt_peaks(4, nn::CheckpointMode::selective);
  // Selective keeps the linear and attention outputs: between block and none.
  EXPECT_LT(sel4.activation_after_forward, none4.activation_after_forward);
  EXPECT_GT(sel4.activation_after_forward, blk4.activation_after_forward);
  // After the forward: each more block costs exactly its input...
  EXPECT_EQ(blk4.activation_after_forward - blk2.activation_after_forward, 2 * block_input);
  // ... where without checkpointing it costs its whole activations.
  const int64_t per_block = (none4.activation_after_forward - none2.activation_after_forward) / 2;
  EXPECT_GT(per_block, 8 * block_input);
  // In backward one block is recomputed at a time: the peak grows by the inputs only.
  EXPECT_EQ(blk4.activation_peak - blk2.activation_peak, 2 * block_input);
  EXPECT_LT(blk4.activation_peak, none4.activation_peak);
  // Recomputed tensors are activations, not gradients: backward's gradient memory is unchanged.
  EXPECT_EQ(blk4.gradient_peak, none4.gradient_peak);
  std::printf(
      "GPT 4 blocks (B=2, T=16, C=32, dropout 0.1), activation bytes: after forward %lld none / %lld block / "
      "%lld selective, peak %lld none / %lld block / %lld selective; allocated peak %lld none / %lld block\n",
      static_cast<long long>(none4.activation_after_forward), static_cast<long long>(blk4.activation_after_forward),
      static_cast<long long>(sel4.activation_after_forward), static_cast<long long>(none4.activation_peak),
      static_cast<long long>(blk4.activation_peak), static_cast<long long>(sel4.activation_peak),
      static_cast<long long>(none4.allocated_peak), static_cast<long long>(blk4.allocated_peak));
}

// A chain of n equal layers, checkpoint_sequential with k = round(sqrt(n)) segments.
int64_t chain_activation_peak(int64_t n, bool sqrt_segments) {
  manual_seed(13);
  std::vector<std::shared_ptr<nn::Module>> layers;
  for (int64_t i = 0; i < n; ++i)
    layers.push_back(std::make_shared<nn::Sequential>(
        std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(64, 64), std::make_shared<nn::GELU>()}));
  Tensor x = Tensor::randn({32, 64});
  return measure([&] {
           return nn::run_checkpointed(layers, x, sqrt_segments ? nn::CheckpointMode::sqrt : nn::CheckpointMode::none)
               .sum();
         })
      .activation_peak;
}

TEST(CheckpointMemory, SqrtSegmentsGrowAsTheSquareRootOfTheDepth) {
  std::vector<int64_t> plain, sqrt_seg;
  for (int64_t n : {4, 16, 64}) {
    plain.push_back(chain_activation_peak(n, false));
    sqrt_seg.push_back(chain_activation_peak(n, true));
  }
  std::printf(
      "activation peak of n Linear(64)+GELU layers, n = 4, 16, 64: none %lld, %lld, %lld; sqrt %lld, %lld, %lld\n",
      static_cast<long long>(plain[0]), static_cast<long long>(plain[1]), static_cast<long long>(plain[2]),
      static_cast<long long>(sqrt_seg[0]), static_cast<long long>(sqrt_seg[1]), static_cast<long long>(sqrt_seg[2]));
  for (size_t i = 1; i < 3; ++i) {
    const double grow_plain = static_cast<double>(plain[i]) / static_cast<double>(plain[i - 1]);
    const double grow_sqrt = static_cast<double>(sqrt_seg[i]) / static_cast<double>(sqrt_seg[i - 1]);
    EXPECT_GT(grow_plain, 3.5) << "no checkpointing: about 4x per 4x layers";
    EXPECT_GT(grow_sqrt, 1.5) << "sqrt segments: about 2x per 4x layers";
    EXPECT_LT(grow_sqrt, 2.6) << "sqrt segments: about 2x per 4x layers";
  }
}

}  // namespace
}  // namespace headroom

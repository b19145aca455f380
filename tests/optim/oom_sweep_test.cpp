// The out-of-memory sweep (sweep_harness.h) over the MLP, the CNN with GroupNorm and a small GPT,
// with automatic batch splitting, autocast (bf16, f16) and GradScaler, on the first step (which
// makes the optimizer's state) and a later one: every allocation of the step failed in turn,
// every segment request failed in turn, and the limit dropped at a spread of allocations. Each
// case is one entry of kCases; a new technique adds entries.
#include <iostream>

#include "autograd/autocast.h"
#include "autograd/offload.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "sweep_harness.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::SweepCase;
using testing::SweepCounts;
using testing::Trainer;

constexpr int64_t kBatch = 8;  // a power of two, so every halving is a fixed split too

enum class Precision { f32, bf16, f16_scaled };

optim::BatchSplitter::StepFn classify(const std::shared_ptr<nn::Module>& model, Precision precision) {
  return [model, precision](const Tensor& x, const Tensor& y) -> optim::MicroBatchOutput {
    if (precision == Precision::f32) return cross_entropy((*model)(x), y);
    AutocastGuard amp(DeviceType::cpu, precision == Precision::bf16 ? DType::bf16 : DType::f16);
    return cross_entropy((*model)(x), y);
  };
}

void add_scaler(Trainer& t, Precision precision) {
  if (precision == Precision::f16_scaled) t.scaler = std::make_unique<optim::GradScaler>();
}

Trainer mlp(Precision precision, bool fused) {
  manual_seed(11);
  Trainer t;
  t.model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(12, 16), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, 5)});
  // Momentum, weight decay and Nesterov: the unfused path uses both workspace buffers.
  t.optimizer = std::make_unique<optim::SGD>(t.model->parameters(), 0.05, 0.9, 1e-3, /*nesterov=*/true);
  t.optimizer->set_fused(fused);
  add_scaler(t, precision);
  t.inputs = Tensor::randn({kBatch, 12});
  t.targets = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 0, 1, 2}, {kBatch}, DType::i64);
  t.fn = classify(t.model, precision);
  return t;
}

// Wide enough that its activations and weights live in large-pool segments of their own, so a
// step asks the device for segments (the small models fit in the small pool's 2 MiB segments).
Trainer wide_mlp(Precision precision) {
  manual_seed(14);
  Trainer t;
  t.model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(64, 8192), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(8192, 5)});
  t.optimizer = std::make_unique<optim::Adam>(t.model->parameters(), 1e-3);
  add_scaler(t, precision);
  t.inputs = Tensor::randn({64, 64});
  std::vector<int64_t> labels(64);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i % 5);
  t.targets = Tensor::from_vector(labels, {64}, DType::i64);
  t.fn = classify(t.model, precision);
  return t;
}

Trainer cnn_group_norm(Precision precision, nn::CheckpointMode checkpoint = nn::CheckpointMode::none,
                       bool inplace_relu = false) {
  manual_seed(12);
  Trainer t;
  t.model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1), std::make_shared<nn::GroupNorm>(2, 4),
      std::make_shared<nn::ReLU>(inplace_relu), std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(4 * 4 * 4, 10)});
  // In-place ReLU recomputed: conv, norm, ReLU and pool one block (as the CNN example's stages),
  // since a ReLU that began a block would overwrite the input the block's re-run starts from
  // (the version check refuses that, naming checkpoint).
  if (inplace_relu) std::static_pointer_cast<nn::Sequential>(t.model)->set_checkpoint(checkpoint, {0, 4});
  else std::static_pointer_cast<nn::Sequential>(t.model)->set_checkpoint(checkpoint);
  t.optimizer = std::make_unique<optim::Adam>(t.model->parameters(), 1e-3);
  add_scaler(t, precision);
  t.inputs = Tensor::randn({kBatch, 1, 8, 8});
  t.targets = Tensor::from_vector(std::vector<int64_t>{9, 1, 2, 3, 4, 5, 6, 7}, {kBatch}, DType::i64);
  t.fn = classify(t.model, precision);
  return t;
}

// The CPU's other convolution forms: 16 x 16 planes at stride 1 take the padded-plane gemms
// (Note [padded-plane convolution]) and a one-filter-a-channel convolution the direct depthwise
// kernels (Note [depthwise convolution]); their scratch fails in turn too.
Trainer cnn_padded_depthwise(Precision precision) {
  manual_seed(14);
  Trainer t;
  t.model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Conv2d>(4, 4, 3, 1, 1, 4), std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Conv2d>(4, 4, 3, 2, 1, 4), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(4 * 4 * 4, 10)});
  t.optimizer = std::make_unique<optim::Adam>(t.model->parameters(), 1e-3);
  add_scaler(t, precision);
  t.inputs = Tensor::randn({kBatch, 1, 16, 16});
  t.targets = Tensor::from_vector(std::vector<int64_t>{9, 1, 2, 3, 4, 5, 6, 7}, {kBatch}, DType::i64);
  t.fn = classify(t.model, precision);
  return t;
}

Trainer gpt(Precision precision, nn::CheckpointMode checkpoint = nn::CheckpointMode::none, int64_t layers = 2) {
  manual_seed(13);
  nn::GPTConfig cfg;
  cfg.vocab_size = 32;
  cfg.block_size = 8;
  cfg.n_layer = layers;
  cfg.checkpoint = checkpoint;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.dropout = 0.1;  // dropout masks must come out the same after a recovery
  Trainer t;
  auto model = std::make_shared<nn::GPT>(cfg);
  t.model = model;
  t.optimizer = std::make_unique<optim::AdamW>(t.model->parameters(), 1e-3);
  add_scaler(t, precision);
  std::vector<int64_t> tokens(kBatch * 8), next(kBatch * 8);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int64_t>((i * 7 + 3) % 32);
    next[i] = static_cast<int64_t>((i * 7 + 10) % 32);
  }
  t.inputs = Tensor::from_vector(tokens, {kBatch, 8}, DType::i64);
  t.targets = Tensor::from_vector(next, {kBatch, 8}, DType::i64);
  t.fn = [model, precision](const Tensor& x, const Tensor& y) -> optim::MicroBatchOutput {
    if (precision == Precision::f32) return model->loss(x, y);
    AutocastGuard amp(DeviceType::cpu, precision == Precision::bf16 ? DType::bf16 : DType::f16);
    return model->loss(x, y);
  };
  return t;
}

// Offload (Note [activation offload], Note [optimizer offload]): saved activations to the host
// pool, and/or Adam's state kept there.
Trainer offloaded(Trainer t, bool activations, bool optimizer_state) {
  if (optimizer_state) {
    auto* adam = dynamic_cast<optim::Adam*>(t.optimizer.get());
    const bool decoupled = dynamic_cast<optim::AdamW*>(t.optimizer.get()) != nullptr;
    if (adam == nullptr) throw ValueError("offloaded(): the case's optimizer is not Adam");
    std::unique_ptr<optim::Optimizer> host;
    if (decoupled) host = std::make_unique<optim::OffloadedAdamW>(t.model->parameters(), adam->lr());
    else host = std::make_unique<optim::OffloadedAdam>(t.model->parameters(), adam->lr());
    t.optimizer = std::move(host);
  }
  if (activations) {
    t.fn = [inner = t.fn](const Tensor& x, const Tensor& y) -> optim::MicroBatchOutput {
      ActivationOffload offload({.min_bytes = 0, .segment_bytes = 0});
      return inner(x, y);
    };
  }
  return t;
}

const std::vector<SweepCase>& cases() {
  constexpr int64_t kAuto = optim::BatchSplitter::kAuto;
  static const std::vector<SweepCase> kCases = {
      {"mlp f32 fused, first step", [] { return mlp(Precision::f32, true); }, 0, kAuto},
      {"mlp f32 unfused", [] { return mlp(Precision::f32, false); }, 1, kAuto},
      {"mlp f32, 2 fixed micro-batches", [] { return mlp(Precision::f32, true); }, 1, 2},
      {"mlp f16 + GradScaler, unfused, first step", [] { return mlp(Precision::f16_scaled, false); }, 0, kAuto},
      {"wide mlp f32, first step", [] { return wide_mlp(Precision::f32); }, 0, kAuto},
      {"wide mlp bf16", [] { return wide_mlp(Precision::bf16); }, 1, kAuto},
      {"wide mlp f16 + GradScaler, 4 fixed micro-batches", [] { return wide_mlp(Precision::f16_scaled); }, 1, 4},
      {"cnn+groupnorm f32", [] { return cnn_group_norm(Precision::f32); }, 1, kAuto},
      {"cnn+groupnorm bf16, first step", [] { return cnn_group_norm(Precision::bf16); }, 0, kAuto},
      {"cnn+groupnorm f16 + GradScaler", [] { return cnn_group_norm(Precision::f16_scaled); }, 1, kAuto},
      {"cnn padded-plane + depthwise f32", [] { return cnn_padded_depthwise(Precision::f32); }, 1, kAuto},
      {"cnn padded-plane + depthwise bf16, first step", [] { return cnn_padded_depthwise(Precision::bf16); }, 0, kAuto},
      {"gpt f32, first step", [] { return gpt(Precision::f32); }, 0, kAuto},
      {"gpt f32", [] { return gpt(Precision::f32); }, 1, kAuto},
      {"gpt bf16", [] { return gpt(Precision::bf16); }, 1, kAuto},
      {"gpt bf16, 2 fixed micro-batches", [] { return gpt(Precision::bf16); }, 1, 2},
      {"gpt f16 + GradScaler, first step", [] { return gpt(Precision::f16_scaled); }, 0, kAuto},
      // Recompute checkpointing (autograd/checkpoint.h): the re-runs in backward fail in turn too.
      {"gpt f32, checkpoint=block", [] { return gpt(Precision::f32, nn::CheckpointMode::block); }, 1, kAuto},
      {"gpt bf16, checkpoint=selective", [] { return gpt(Precision::bf16, nn::CheckpointMode::selective); }, 1, kAuto},
      {"gpt f32 3 layers, checkpoint=sqrt (2 segments)",
       [] { return gpt(Precision::f32, nn::CheckpointMode::sqrt, 3); }, 1, kAuto},
      {"cnn+groupnorm f16 + GradScaler, checkpoint=block",
       [] { return cnn_group_norm(Precision::f16_scaled, nn::CheckpointMode::block); }, 1, kAuto},
      // In-place ReLU (Note [differentiable in-place]), plain and inside recomputed blocks.
      {"cnn+groupnorm f32, ReLU in place",
       [] { return cnn_group_norm(Precision::f32, nn::CheckpointMode::none, true); }, 1, kAuto},
      {"cnn+groupnorm f32, ReLU in place, checkpoint=block",
       [] { return cnn_group_norm(Precision::f32, nn::CheckpointMode::block, true); }, 1, kAuto},
      // Offload, its copies to and from the host pool failed in turn too.
      {"cnn+groupnorm f32, activations offloaded",
       [] { return offloaded(cnn_group_norm(Precision::f32), true, false); }, 1, kAuto},
      {"cnn+groupnorm f32, activations offloaded, host pool failing",
       [] { return offloaded(cnn_group_norm(Precision::f32), true, false); }, 1, kAuto, true},
      {"gpt f32, checkpoint=block, checkpoints offloaded, host pool failing",
       [] { return offloaded(gpt(Precision::f32, nn::CheckpointMode::block), true, false); }, 1, kAuto, true},
      {"wide mlp f32, Adam state offloaded, first step",
       [] { return offloaded(wide_mlp(Precision::f32), false, true); }, 0, kAuto},
      {"wide mlp f32, Adam state offloaded, first step, host pool failing",
       [] { return offloaded(wide_mlp(Precision::f32), false, true); }, 0, kAuto, true},
      {"gpt bf16, activations and AdamW state offloaded, host pool failing",
       [] { return offloaded(gpt(Precision::bf16), true, true); }, 1, kAuto, true},
  };
  return kCases;
}

void run_sweep(FaultKind kind, int64_t stride, int64_t min_runs) {
  SweepCounts total;
  for (const SweepCase& c : cases()) {
    SweepCounts counts = testing::sweep(c, kind, stride);
    std::cout << "  " << c.name << ": " << testing::describe_counts(counts) << "\n";
    total.add(counts);
  }
  std::cout << "sweep (" << fault_kind_name(kind) << "): " << testing::describe_counts(total) << std::endl;
  for (const std::string& f : total.failures) ADD_FAILURE() << f;
  EXPECT_EQ(total.recovered + total.refused, total.runs);
  EXPECT_EQ(total.identical, total.runs);
  EXPECT_EQ(total.leaked_bytes, 0);
  EXPECT_GE(total.runs, min_runs);
}

TEST(OomSweep, EveryAllocationOfAStepFailedInTurn) { run_sweep(FaultKind::allocation, 1, 2000); }

TEST(OomSweep, EverySegmentRequestOfAStepFailedInTurn) { run_sweep(FaultKind::segment, 1, 10); }

// A limit dropped to what is reserved: a real, lasting shortage, which the splitter must work
// around by halving the micro-batch (or refuse cleanly at one sample).
TEST(OomSweep, TheLimitDroppedMidStep) { run_sweep(FaultKind::limit, 7, 100); }

}  // namespace
}  // namespace headroom

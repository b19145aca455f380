// Smaller models (docs/smaller-models.md): the depthwise-separable block, magnitude and channel
// pruning, and the distillation loss. Mechanics only -- shapes, counts, exactness, gradients,
// memory and errors -- on tiny tensors; the trained numbers are in the docs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/caching_allocator.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

// ---- the depthwise-separable block ----

TEST(SeparableConv, OutputShapeAndParameterCountMatchTheFormula) {
  nn::DepthwiseSeparableConv2d block(8, 16, /*stride=*/2);
  EXPECT_EQ(block.depthwise->groups, 8);
  EXPECT_EQ(block.depthwise->weight.shape(), (Shape{8, 1, 3, 3}));
  EXPECT_EQ(block.pointwise->weight.shape(), (Shape{16, 8, 1, 1}));
  EXPECT_EQ(block.num_parameters(), 8 * 9 + 8 * 16 + 2 * (8 + 16));
  EXPECT_EQ(block.num_parameters(), nn::DepthwiseSeparableConv2d::parameter_count(8, 16));
  Tensor y = block(Tensor::randn({2, 8, 10, 10}));
  EXPECT_EQ(y.shape(), (Shape{2, 16, 5, 5}));
  EXPECT_GE(amin(y).item<float>(), 0.0f) << "ends in ReLU";
  // Without BatchNorm the convs carry biases; a 5x5 kernel at stride 1 keeps the size.
  nn::DepthwiseSeparableConv2d plain(4, 6, 1, /*kernel=*/5, /*batch_norm=*/false);
  EXPECT_EQ(plain.num_parameters(), 4 * 25 + 4 * 6 + 4 + 6);
  EXPECT_EQ(plain.num_parameters(), nn::DepthwiseSeparableConv2d::parameter_count(4, 6, 5, false));
  EXPECT_EQ(plain(Tensor::randn({1, 4, 7, 7})).shape(), (Shape{1, 6, 7, 7}));
  // Against the plain 3x3 conv it replaces: about 9 times fewer weights for wide layers.
  EXPECT_LT(nn::DepthwiseSeparableConv2d::parameter_count(128, 128) * 8, 128 * 128 * 9);
}

TEST(SeparableConv, GradientsMatchFiniteDifferences) {
  manual_seed(11);
  nn::DepthwiseSeparableConv2d block(3, 4, /*stride=*/2);
  block.to(DType::f64);
  Tensor x = testing::rand_f64({2, 3, 5, 5});
  EXPECT_TRUE(testing::grad_ok(
      [&](const std::vector<Tensor>& in) { return block(in[0]); },
      {x, block.depthwise->weight, block.pointwise->weight, block.depthwise_bn->weight, block.pointwise_bn->bias}));
}

TEST(SeparableConv, RejectsBadArgumentsAndInputs) {
  EXPECT_THROW_WITH(nn::DepthwiseSeparableConv2d(4, 8, 1, /*kernel=*/4), ValueError, "kernel must be odd");
  EXPECT_THROW_WITH(nn::DepthwiseSeparableConv2d(0, 8), ValueError, "in=0");
  nn::DepthwiseSeparableConv2d block(4, 8);
  EXPECT_THROW_WITH(block(Tensor::randn({1, 3, 6, 6})), ShapeError, "expected input [N, 4, H, W]");
}

// ---- channel pruning ----

// conv 1->6, BN, ReLU, maxpool, conv 6->8 (bias), BN, ReLU, maxpool, flatten, linear 8*2*2 -> 5
// on 8x8 inputs, with BatchNorm statistics and affines that are not the defaults.
std::shared_ptr<nn::Sequential> small_cnn(DType dtype) {
  auto m = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 6, 3, 1, 1, 1, false), std::make_shared<nn::BatchNorm2d>(6),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Conv2d>(6, 8, 3, 1, 1, 1, true), std::make_shared<nn::BatchNorm2d>(8),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(8 * 2 * 2, 5)});
  m->to(dtype);
  NoGradGuard no_grad;
  for (int64_t i : {1, 5}) {
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(m->at(i));
    bn->weight.copy_(Tensor::rand({bn->channels}) + 0.5);
    bn->bias.copy_(Tensor::randn({bn->channels}) * 0.3);
    bn->running_mean.copy_(Tensor::randn({bn->channels}) * 0.2);
    bn->running_var.copy_(Tensor::rand({bn->channels}) + 0.5);
  }
  return m;
}

// Zeroes, in the unpruned model, exactly what prune_channels removed: the filters, biases and
// BatchNorm affines of the channels it did not keep. Such a channel's output is 0 after BN,
// ReLU and pooling, so it adds nothing to the next layer.
void zero_removed_channels(nn::Sequential& model, const std::vector<nn::PrunedChannels>& report) {
  NoGradGuard no_grad;
  for (const nn::PrunedChannels& p : report) {
    const int64_t i = std::stoll(p.layer);
    auto conv = std::dynamic_pointer_cast<nn::Conv2d>(model.at(i));
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(model.at(i + 1));
    ASSERT_TRUE(conv && bn);
    for (int64_t c = 0; c < p.before; ++c) {
      if (std::find(p.kept.begin(), p.kept.end(), c) != p.kept.end()) continue;
      conv->weight.select(0, c).zero_();
      if (conv->bias.defined()) conv->bias.select(0, c).zero_();
      bn->weight.select(0, c).zero_();
      bn->bias.select(0, c).zero_();
    }
  }
}

TEST(ChannelPruning, PrunedModelComputesWhatTheZeroedModelComputes) {
  manual_seed(5);
  auto pruned = small_cnn(DType::f64);
  auto zeroed = small_cnn(DType::f64);
  zeroed->load_state_dict(pruned->state_dict());
  const int64_t params_before = pruned->num_parameters();

  const std::vector<nn::PrunedChannels> report = nn::prune_channels(*pruned, 0.5);
  ASSERT_EQ(report.size(), 2u) << "both convs feed a consumer";
  EXPECT_EQ(report[0].layer, "0");
  EXPECT_EQ(report[0].before, 6);
  EXPECT_EQ(report[0].after, 3);
  EXPECT_EQ(report[1].layer, "4");
  EXPECT_EQ(report[1].after, 4);
  zero_removed_channels(*zeroed, report);

  // Smaller tensors, all of them.
  auto conv0 = std::dynamic_pointer_cast<nn::Conv2d>(pruned->at(0));
  auto bn1 = std::dynamic_pointer_cast<nn::BatchNorm2d>(pruned->at(1));
  auto conv4 = std::dynamic_pointer_cast<nn::Conv2d>(pruned->at(4));
  auto bn5 = std::dynamic_pointer_cast<nn::BatchNorm2d>(pruned->at(5));
  auto fc = std::dynamic_pointer_cast<nn::Linear>(pruned->at(9));
  EXPECT_EQ(conv0->weight.shape(), (Shape{3, 1, 3, 3}));
  EXPECT_EQ(bn1->running_var.shape(), (Shape{3}));
  EXPECT_EQ(conv4->weight.shape(), (Shape{4, 3, 3, 3}));
  EXPECT_EQ(conv4->bias.shape(), (Shape{4}));
  EXPECT_EQ(bn5->weight.shape(), (Shape{4}));
  EXPECT_EQ(fc->weight.shape(), (Shape{5, 16}));
  EXPECT_EQ(fc->in_features, 16);
  EXPECT_TRUE(conv4->weight.requires_grad() && conv4->weight.is_leaf());
  EXPECT_FALSE(bn5->running_mean.requires_grad());
  EXPECT_EQ(pruned->num_parameters(),
            params_before - (3 * 9 + 3 * 2) - (4 * 6 * 9 + 8 * 3 * 9 - 4 * 3 * 9 + 4 + 4 * 2) - 5 * 16);

  // The same outputs (f64: only the order of the additions differs) in eval and in training mode.
  Tensor x = Tensor::randn({3, 1, 8, 8}, TensorOptions().dtype(DType::f64));
  pruned->eval();
  zeroed->eval();
  EXPECT_TRUE(all_close((*pruned)(x), (*zeroed)(x), 1e-12, 0));
  pruned->train();
  zeroed->train();
  EXPECT_TRUE(all_close((*pruned)(x), (*zeroed)(x), 1e-12, 0));
  // And it trains: gradients reach every pruned tensor with its new shape.
  sum((*pruned)(x)).backward();
  EXPECT_EQ(conv4->weight.grad().shape(), (Shape{4, 3, 3, 3}));
  EXPECT_EQ(fc->weight.grad().shape(), (Shape{5, 16}));
}

TEST(ChannelPruning, KeepsTheFiltersWithTheLargestL1Norm) {
  auto model = small_cnn(DType::f32);
  auto conv0 = std::dynamic_pointer_cast<nn::Conv2d>(model->at(0));
  {
    NoGradGuard no_grad;
    // Filter c has L1 norm 9 * |scale[c]|: the signs must not matter, ties keep the lower index.
    const std::vector<float> scale = {0.5f, -3.0f, 0.1f, 2.0f, -0.5f, 1.0f};
    for (int64_t c = 0; c < 6; ++c) conv0->weight.select(0, c).fill_(scale[static_cast<size_t>(c)]);
  }
  const auto report = nn::prune_channels(*model, 0.5);
  EXPECT_EQ(report[0].kept, (std::vector<int64_t>{1, 3, 5}));
  // 0.4 of 6 is 2.4: floor, so 2 go.
  auto other = small_cnn(DType::f32);
  EXPECT_EQ(nn::prune_channels(*other, 0.4)[0].after, 4);
  auto none = small_cnn(DType::f32);
  EXPECT_EQ(nn::prune_channels(*none, 0.0)[0].after, 6);
}

TEST(ChannelPruning, HalvingTheChannelsShrinksTheMeasuredActivationPeak) {
  manual_seed(7);
  // Fashion-MNIST's CNN at its default widths (16, 32), batch 32.
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 16, 3, 1, 1, 1, false), std::make_shared<nn::BatchNorm2d>(16),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Conv2d>(16, 32, 3, 1, 1, 1, false), std::make_shared<nn::BatchNorm2d>(32),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(32 * 7 * 7, 128), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(128, 10)});
  Tensor x = Tensor::randn({32, 1, 28, 28});
  Tensor y = Tensor::zeros({32}, TensorOptions().dtype(DType::i64));
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  auto step_peak = [&] {
    alloc.reset_peak_stats();
    cross_entropy((*model)(x), y).backward();
    model->zero_grad();
    return alloc.stats().category(MemoryCategory::activation).peak;
  };
  const int64_t before = step_peak();
  const int64_t params_before = model->num_parameters();
  nn::prune_channels(*model, 0.5);
  const int64_t after = step_peak();
  EXPECT_LT(model->num_parameters() * 19, params_before * 10) << "about half the parameters";
  EXPECT_GT(before, 0);
  EXPECT_LT(after * 10, before * 6) << "activation peak " << before << " -> " << after << " bytes";
}

TEST(ChannelPruning, RefusesWhatItCannotPruneNamingTheLayer) {
  auto model = small_cnn(DType::f32);
  EXPECT_THROW_WITH(nn::prune_channels(*model, 1.0), ValueError,
                    "prune_channels: the fraction to prune must be in [0, 1), got 1");
  EXPECT_THROW_WITH(nn::prune_channels(*model, -0.1), ValueError, "in [0, 1)");
  EXPECT_THROW_WITH(nn::prune_channels(*model, std::nan("")), ValueError, "in [0, 1)");
  EXPECT_EQ(std::dynamic_pointer_cast<nn::Conv2d>(model->at(0))->out_channels, 6) << "unchanged after a refusal";

  using Modules = std::vector<std::shared_ptr<nn::Module>>;
  nn::Sequential depthwise(
      Modules{std::make_shared<nn::Conv2d>(4, 4, 3, 1, 1, /*groups=*/4), std::make_shared<nn::Conv2d>(4, 2, 1)});
  EXPECT_THROW_WITH(nn::prune_channels(depthwise, 0.5), ValueError, "depthwise conv (groups=4)");
  nn::Sequential into_depthwise(Modules{std::make_shared<nn::Conv2d>(2, 4, 3), std::make_shared<nn::ReLU>(),
                                        std::make_shared<nn::Conv2d>(4, 4, 3, 1, 1, /*groups=*/4)});
  EXPECT_THROW_WITH(nn::prune_channels(into_depthwise, 0.5), ValueError,
                    "feeds '2' (Conv2d(4, 4, kernel=3, padding=1, groups=4))");
  nn::Sequential group_norm(Modules{std::make_shared<nn::Conv2d>(1, 8, 3), std::make_shared<nn::GroupNorm>(2, 8),
                                    std::make_shared<nn::Conv2d>(8, 4, 3)});
  EXPECT_THROW_WITH(nn::prune_channels(group_norm, 0.5), ValueError, "reaches '1' (GroupNorm");
  nn::Sequential separable(
      Modules{std::make_shared<nn::Conv2d>(1, 8, 3), std::make_shared<nn::DepthwiseSeparableConv2d>(8, 16)});
  EXPECT_THROW_WITH(nn::prune_channels(separable, 0.5), ValueError, "DepthwiseSeparableConv2d(8, 16)");
  nn::Sequential last_conv_only(Modules{std::make_shared<nn::Linear>(4, 4), std::make_shared<nn::Conv2d>(1, 4, 3)});
  EXPECT_THROW_WITH(nn::prune_channels(last_conv_only, 0.5), ValueError, "nothing to prune");
  nn::Sequential flatten_no_linear(Modules{std::make_shared<nn::Conv2d>(1, 4, 3), std::make_shared<nn::Flatten>()});
  EXPECT_THROW_WITH(nn::prune_channels(flatten_no_linear, 0.5), ValueError, "reaches no Linear");
}

// ---- magnitude pruning ----

std::shared_ptr<nn::Sequential> small_mlp() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(10, 8), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(8, 3)});
}

TEST(MagnitudePruning, MasksTheSmallestWeightsOfEachTensor) {
  manual_seed(2);
  auto model = small_mlp();
  const std::vector<float> w0 = model->named_parameters()[0].second.to_vector<float>();
  nn::MagnitudePruner pruner(*model, 0.3);
  ASSERT_EQ(pruner.masked().size(), 2u) << "the two weights, not the biases";
  EXPECT_EQ(pruner.masked()[0].name, "0.weight");
  EXPECT_EQ(pruner.pruned(), 24 + 7);  // floor(0.3 * 80), floor(0.3 * 24)
  EXPECT_EQ(pruner.prunable(), 80 + 24);
  EXPECT_NEAR(pruner.sparsity(), 31.0 / 104.0, 1e-12);
  // Every pruned entry was no larger than every kept one.
  const std::vector<float> mask = pruner.masked()[0].mask.to_vector<float>();
  float largest_pruned = 0, smallest_kept = 1e30f;
  for (size_t i = 0; i < w0.size(); ++i) {
    if (mask[i] == 0) largest_pruned = std::max(largest_pruned, std::abs(w0[i]));
    else smallest_kept = std::min(smallest_kept, std::abs(w0[i]));
  }
  EXPECT_LE(largest_pruned, smallest_kept);
}

TEST(MagnitudePruning, PrunedWeightsStayExactlyZeroThroughAdamSteps) {
  manual_seed(4);
  auto model = small_mlp();
  nn::MagnitudePruner pruner(*model, 0.5);
  optim::Adam adam(model->parameters(), 0.05, 0.9, 0.999, 1e-8, /*weight_decay=*/0.01);
  Tensor x = Tensor::randn({16, 10});
  Tensor y =
      Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0}, {16}, DType::i64);
  auto zeros_where_masked = [&](bool* all_zero) {
    *all_zero = true;
    int64_t moved_kept = 0;
    for (const auto& m : pruner.masked()) {
      Tensor w;
      for (auto& [name, t] : model->named_parameters())
        if (name == m.name) w = t;
      const std::vector<float> wv = w.to_vector<float>(), mv = m.mask.to_vector<float>();
      for (size_t i = 0; i < wv.size(); ++i) {
        if (mv[i] == 0 && wv[i] != 0.0f) *all_zero = false;
        moved_kept += mv[i] != 0;
      }
    }
    return moved_kept;
  };
  const double first_loss = cross_entropy((*model)(x), y).item<double>();
  for (int step = 0; step < 5; ++step) {
    adam.zero_grad();
    cross_entropy((*model)(x), y).backward();
    adam.step();
    pruner.apply();
    bool all_zero = false;
    zeros_where_masked(&all_zero);
    EXPECT_TRUE(all_zero) << "step " << step;
  }
  EXPECT_LT(cross_entropy((*model)(x), y).item<double>(), first_loss) << "the kept weights still train";
  // Without apply() the optimizer moves them (momentum, weight decay): the mask is what holds them.
  adam.zero_grad();
  cross_entropy((*model)(x), y).backward();
  adam.step();
  bool all_zero = true;
  zeros_where_masked(&all_zero);
  EXPECT_FALSE(all_zero);
}

TEST(MagnitudePruning, RefusesBadFractionsAndModelsWithoutWeights) {
  auto model = small_mlp();
  EXPECT_THROW_WITH(nn::MagnitudePruner(*model, 1.0), ValueError,
                    "MagnitudePruner: the fraction to prune must be in [0, 1)");
  EXPECT_THROW_WITH(nn::MagnitudePruner(*model, -0.5), ValueError, "got -0.5");
  nn::Sequential no_weights(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::ReLU>()});
  EXPECT_THROW_WITH(nn::MagnitudePruner(no_weights, 0.5), ValueError, "no Conv2d or Linear weight");
  // Channel pruning after the pruner changed a weight's shape: apply() says so.
  auto cnn = small_cnn(DType::f32);
  nn::MagnitudePruner pruner(*cnn, 0.5);
  nn::prune_channels(*cnn, 0.5);
  EXPECT_THROW_WITH(pruner.apply(), ShapeError, "'0.weight' is (3, 1, 3, 3) but its mask is (6, 1, 3, 3)");
}

// ---- distillation ----

TEST(Distillation, LossAndGradientMatchTheHandComputedValues) {
  const double T = 2.0, alpha = 0.7;
  const std::vector<double> s = {1.0, -0.5, 2.0, 0.3, 0.1, -1.2}, t = {0.5, 0.2, 1.5, -0.4, 1.1, 0.0};
  const std::vector<int64_t> labels = {2, 0};
  Tensor student = Tensor::from_vector(s, {2, 3}, TensorOptions().dtype(DType::f64).requires_grad(true));
  Tensor teacher = Tensor::from_vector(t, {2, 3}, TensorOptions().dtype(DType::f64));
  Tensor loss = nn::distillation_loss(student, teacher, Tensor::from_vector(labels, {2}, DType::i64), T, alpha);

  auto softmax_row = [](const std::vector<double>& v, size_t row, double temp) {
    std::vector<double> out(3);
    double z = 0;
    for (size_t c = 0; c < 3; ++c) z += std::exp(v[row * 3 + c] / temp);
    for (size_t c = 0; c < 3; ++c) out[c] = std::exp(v[row * 3 + c] / temp) / z;
    return out;
  };
  double kl = 0, ce = 0;
  std::vector<double> grad(6);
  for (size_t r = 0; r < 2; ++r) {
    const auto p = softmax_row(t, r, T), q = softmax_row(s, r, T), hard = softmax_row(s, r, 1.0);
    for (size_t c = 0; c < 3; ++c) {
      kl += p[c] * std::log(p[c] / q[c]);
      const double onehot = static_cast<int64_t>(c) == labels[r] ? 1.0 : 0.0;
      // d/ds of alpha T^2 KL / N is alpha T (q - p) / N; of (1 - alpha) CE / N, (1 - alpha)(softmax(s) - y) / N.
      grad[r * 3 + c] = alpha * T * (q[c] - p[c]) / 2 + (1 - alpha) * (hard[c] - onehot) / 2;
    }
    ce -= std::log(hard[static_cast<size_t>(labels[r])]);
  }
  const double expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2;
  EXPECT_NEAR(loss.item<double>(), expected, 1e-12);
  loss.backward();
  EXPECT_TRUE(all_close(student.grad(), Tensor::from_vector(grad, {2, 3}, DType::f64), 1e-12, 0));
  EXPECT_TRUE(testing::grad_ok(
      [&](const std::vector<Tensor>& in) {
        return nn::distillation_loss(in[0], teacher, Tensor::from_vector(labels, {2}, DType::i64), T, alpha);
      },
      {testing::rand_f64({2, 3})}));
  // alpha = 0 is plain cross-entropy; alpha = 1 ignores the labels.
  EXPECT_NEAR(nn::distillation_loss(student.detach(), teacher, Tensor::from_vector(labels, {2}, DType::i64), T, 0.0)
                  .item<double>(),
              ce / 2, 1e-12);
  EXPECT_NEAR(nn::DistillationLoss(T, 1.0)(student.detach(), teacher, Tensor::from_vector(labels, {2}, DType::i64))
                  .item<double>(),
              T * T * kl / 2, 1e-12);
}

TEST(Distillation, RefusesBadSettingsAndATeacherThatKeepsItsGraph) {
  Tensor s = Tensor::randn({4, 10}).set_requires_grad(true);
  Tensor t = Tensor::randn({4, 10});
  Tensor y = Tensor::zeros({4}, TensorOptions().dtype(DType::i64));
  EXPECT_THROW_WITH(nn::distillation_loss(s, t, y, 0.0, 0.5), ValueError, "temperature must be positive, got 0");
  EXPECT_THROW_WITH(nn::distillation_loss(s, t, y, 2.0, 1.5), ValueError, "alpha must be in [0, 1], got 1.5");
  EXPECT_THROW_WITH(nn::DistillationLoss(-1.0, 0.5), ValueError, "DistillationLoss: temperature");
  EXPECT_THROW_WITH(nn::distillation_loss(s, Tensor::randn({4, 9}), y, 2.0, 0.5), ShapeError,
                    "teacher logits (4, 9) and student logits (4, 10)");
  EXPECT_THROW_WITH(nn::distillation_loss(s, t, Tensor::zeros({3}, TensorOptions().dtype(DType::i64)), 2.0, 0.5),
                    ShapeError, "labels must be [4]");
  Tensor teacher_with_graph = Tensor::randn({4, 10}).set_requires_grad(true) * 2.0;
  EXPECT_THROW_WITH(nn::distillation_loss(s, teacher_with_graph, y, 2.0, 0.5), ValueError, "InferenceGuard");
}

TEST(Distillation, TeacherUnderInferenceSavesNoActivations) {
  manual_seed(9);
  nn::Sequential teacher(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 8, 3, 1, 1), std::make_shared<nn::ReLU>(), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(8 * 8 * 8, 10)});
  Tensor x = Tensor::randn({16, 1, 8, 8});
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  alloc.reset_peak_stats();
  Tensor logits;
  {
    InferenceGuard inference;
    logits = teacher(x);
  }
  EXPECT_FALSE(logits.requires_grad());
  EXPECT_EQ(alloc.stats().category(MemoryCategory::activation).peak, 0) << "nothing saved for backward";
  // The same forward with grad keeps the conv's input and the ReLU's output.
  Tensor with_graph = teacher(x);
  EXPECT_GT(alloc.stats().category(MemoryCategory::activation).current, 0);
}

}  // namespace
}  // namespace headroom

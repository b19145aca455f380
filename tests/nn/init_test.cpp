// Initialisers: bounds, means and standard deviations on large tensors (tolerances a few
// standard errors wide), fans and gains, reproducibility under manual_seed, and the layers'
// PyTorch-style defaults.
#include <cmath>

#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

struct Stats {
  double min, max, mean, std;
};

Stats stats_of(const Tensor& t) {
  std::vector<double> v = t.to_vector<double>();
  Stats s{INFINITY, -INFINITY, 0, 0};
  for (double x : v) {
    s.min = std::min(s.min, x);
    s.max = std::max(s.max, x);
    s.mean += x;
  }
  s.mean /= static_cast<double>(v.size());
  for (double x : v) s.std += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(s.std / static_cast<double>(v.size() - 1));
  return s;
}

// n = 200k samples: the standard error of a mean is std / 447, of a std about std / 632.
constexpr int64_t kRows = 400, kCols = 500;

TEST(Init, UniformAndNormal) {
  manual_seed(11);
  Tensor t = Tensor::empty({kRows, kCols});
  nn::init::uniform_(t, -2.0, 3.0);
  Stats s = stats_of(t);
  EXPECT_GE(s.min, -2.0);
  EXPECT_LT(s.max, 3.0);
  EXPECT_LT(s.min, -1.99);  // the whole range is used
  EXPECT_GT(s.max, 2.99);
  EXPECT_NEAR(s.mean, 0.5, 0.02);
  EXPECT_NEAR(s.std, 5.0 / std::sqrt(12.0), 0.01);

  nn::init::normal_(t, 1.5, 0.5);
  s = stats_of(t);
  EXPECT_NEAR(s.mean, 1.5, 0.005);
  EXPECT_NEAR(s.std, 0.5, 0.005);

  nn::init::constant_(t, 0.25);
  s = stats_of(t);
  EXPECT_EQ(s.min, 0.25);
  EXPECT_EQ(s.max, 0.25);
  nn::init::zeros_(t);
  EXPECT_EQ(t.sum().item<double>(), 0.0);
  nn::init::ones_(t);
  EXPECT_EQ(t.sum().item<double>(), static_cast<double>(kRows * kCols));
}

TEST(Init, ReproducibleUnderManualSeedAndForEveryFloatDtype) {
  Tensor a = Tensor::empty({64, 32}), b = Tensor::empty({64, 32});
  manual_seed(5);
  nn::init::kaiming_normal_(a);
  manual_seed(5);
  nn::init::kaiming_normal_(b);
  EXPECT_TRUE(testing::all_close(a, b, 0, 0));
  nn::init::kaiming_normal_(b);  // the generator moved on
  EXPECT_FALSE(testing::all_close(a, b));
  // f16/bf16/f64 tensors get the f32 (f64) draw, rounded: same seed, same values within rounding.
  for (DType d : {DType::f64, DType::f16, DType::bf16}) {
    Tensor h = Tensor::empty({64, 32}, d);
    manual_seed(5);
    nn::init::kaiming_normal_(h);
    EXPECT_EQ(h.dtype(), d);
    if (d != DType::f64) {
      EXPECT_TRUE(testing::all_close(h, a, 1e-2, 1e-2)) << dtype_name(d);
    }
  }
  // Strided destinations: a transposed view is filled through its strides.
  Tensor base = Tensor::zeros({8, 6});
  nn::init::ones_(base.t());
  EXPECT_EQ(base.sum().item<double>(), 48.0);
  Tensor ints = Tensor::zeros({3}, DType::i64);
  EXPECT_THROW_WITH(nn::init::normal_(ints), DTypeError, "expected a floating tensor");
  EXPECT_THROW_WITH(nn::init::uniform_(a, 1.0, 0.0), ValueError, "exceeds upper bound");
}

TEST(Init, FansAndGains) {
  auto [fi, fo] = nn::init::calculate_fan_in_and_fan_out(Tensor::empty({16, 8, 3, 3}));
  EXPECT_EQ(fi, 8 * 9);
  EXPECT_EQ(fo, 16 * 9);
  auto [li, lo] = nn::init::calculate_fan_in_and_fan_out(Tensor::empty({10, 784}));
  EXPECT_EQ(li, 784);
  EXPECT_EQ(lo, 10);
  EXPECT_THROW_WITH(nn::init::calculate_fan_in_and_fan_out(Tensor::empty({5})), ShapeError, "at least 2 dims");
  using nn::init::Nonlinearity;
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain(Nonlinearity::relu), std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain(Nonlinearity::tanh), 5.0 / 3.0);
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain(Nonlinearity::linear), 1.0);
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain(Nonlinearity::leaky_relu, std::sqrt(5.0)), std::sqrt(1.0 / 3.0));
  EXPECT_DOUBLE_EQ(nn::init::calculate_gain(Nonlinearity::selu), 0.75);
}

TEST(Init, XavierAndKaiming) {
  manual_seed(21);
  Tensor w = Tensor::empty({kRows, kCols});  // fan_in 500, fan_out 400
  nn::init::xavier_uniform_(w, 2.0);
  Stats s = stats_of(w);
  const double a = 2.0 * std::sqrt(6.0 / 900.0);
  EXPECT_GE(s.min, -a);
  EXPECT_LE(s.max, a);
  EXPECT_NEAR(s.std, a / std::sqrt(3.0), 0.01 * a);

  nn::init::xavier_normal_(w);
  s = stats_of(w);
  EXPECT_NEAR(s.std, std::sqrt(2.0 / 900.0), 0.01 * std::sqrt(2.0 / 900.0));
  EXPECT_NEAR(s.mean, 0.0, 0.01 * std::sqrt(2.0 / 900.0));

  using nn::init::FanMode;
  using nn::init::Nonlinearity;
  nn::init::kaiming_normal_(w, 0.0, FanMode::fan_out, Nonlinearity::relu);
  s = stats_of(w);
  EXPECT_NEAR(s.std, std::sqrt(2.0 / 400.0), 0.01 * std::sqrt(2.0 / 400.0));
  nn::init::kaiming_normal_(w, 0.0, FanMode::fan_in, Nonlinearity::relu);
  EXPECT_NEAR(stats_of(w).std, std::sqrt(2.0 / 500.0), 0.01 * std::sqrt(2.0 / 500.0));

  nn::init::kaiming_uniform_(w, 0.0, FanMode::fan_in, Nonlinearity::relu);
  s = stats_of(w);
  const double bound = std::sqrt(6.0 / 500.0);
  EXPECT_GE(s.min, -bound);
  EXPECT_LE(s.max, bound);
  EXPECT_GT(s.max, 0.99 * bound);
  // The defaults (a = sqrt(5), leaky_relu): PyTorch's Linear init, bound 1 / sqrt(fan_in).
  nn::init::kaiming_uniform_(w);
  s = stats_of(w);
  EXPECT_LE(s.max, 1.0 / std::sqrt(500.0));
  EXPECT_GT(s.max, 0.99 / std::sqrt(500.0));
}

TEST(Init, LayerDefaultsMatchPyTorch) {
  manual_seed(31);
  nn::Linear lin(400, 300);  // 120k weights
  Stats s = stats_of(lin.weight);
  const double bound = 1.0 / std::sqrt(400.0);
  EXPECT_GE(s.min, -bound);
  EXPECT_LE(s.max, bound);
  EXPECT_NEAR(s.std, bound / std::sqrt(3.0), 0.01 * bound);
  Stats sb = stats_of(lin.bias);
  EXPECT_GE(sb.min, -bound);
  EXPECT_LE(sb.max, bound);
  EXPECT_GT(sb.max - sb.min, bound);  // spread over the range, not constant

  nn::Conv2d conv(16, 64, 3, 1, 1, /*groups=*/4);  // fan_in = 16 / 4 * 9 = 36
  EXPECT_EQ(conv.weight.shape(), (Shape{64, 4, 3, 3}));
  s = stats_of(conv.weight);
  EXPECT_LE(s.max, 1.0 / 6.0);
  EXPECT_GE(s.min, -1.0 / 6.0);
  EXPECT_GT(s.max, 0.95 / 6.0);

  nn::Embedding emb(1000, 100);
  s = stats_of(emb.weight);
  EXPECT_NEAR(s.mean, 0.0, 0.01);
  EXPECT_NEAR(s.std, 1.0, 0.01);

  nn::BatchNorm2d bn(5);
  EXPECT_EQ(bn.weight.to_vector<float>(), std::vector<float>(5, 1.0f));
  EXPECT_EQ(bn.bias.to_vector<float>(), std::vector<float>(5, 0.0f));
  EXPECT_EQ(bn.running_mean.to_vector<float>(), std::vector<float>(5, 0.0f));
  EXPECT_EQ(bn.running_var.to_vector<float>(), std::vector<float>(5, 1.0f));
  EXPECT_EQ(bn.num_batches_tracked.dtype(), DType::i64);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 0);

  // Same seed, same model.
  manual_seed(77);
  nn::Linear a(20, 10);
  manual_seed(77);
  nn::Linear b(20, 10);
  EXPECT_TRUE(testing::all_close(a.weight, b.weight, 0, 0));
  EXPECT_TRUE(testing::all_close(a.bias, b.bias, 0, 0));
}

}  // namespace
}  // namespace headroom

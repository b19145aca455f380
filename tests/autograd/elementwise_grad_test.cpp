// gradcheck for every elementwise, reduction and view op, with broadcast and non-contiguous
// inputs.
#include "test_util.h"

namespace headroom {
namespace {

using testing::grad_ok;
using testing::rand_f64;
using V = std::vector<Tensor>;

Tensor positive(const Shape& s) {
  Tensor t = rand_f64(s, false);
  Tensor p = abs(t) + 0.5;
  return p.set_requires_grad();
}

TEST(GradElementwise, BinaryWithBroadcast) {
  Tensor a = rand_f64({3, 4}), b = rand_f64({4}), c = rand_f64({3, 1});
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0] + v[1]; }, {a, b}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0] - v[1]; }, {a, c}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0] * v[1]; }, {a, b}));
  Tensor pb = positive({4});
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0] / v[1]; }, {a, pb}));
  Tensor pa = positive({3, 4});
  EXPECT_TRUE(grad_ok([](const V& v) { return pow(v[0], v[1]); }, {pa, c}));
  EXPECT_TRUE(grad_ok([](const V& v) { return pow(v[0], 3.0); }, {a}));
  EXPECT_TRUE(grad_ok([](const V& v) { return maximum(v[0], v[1]); }, {a, b}));
  EXPECT_TRUE(grad_ok([](const V& v) { return minimum(v[0], v[1]); }, {a, c}));
  EXPECT_TRUE(grad_ok([](const V& v) { return 2.0 - v[0] / 3.0; }, {a}));
}

TEST(GradElementwise, UnaryOps) {
  Tensor x = rand_f64({5, 3});
  Tensor p = positive({5, 3});
  EXPECT_TRUE(grad_ok([](const V& v) { return neg(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return exp(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return log(v[0]); }, {p}));
  EXPECT_TRUE(grad_ok([](const V& v) { return sqrt(v[0]); }, {p}));
  EXPECT_TRUE(grad_ok([](const V& v) { return abs(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return relu(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return gelu(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return tanh(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return sigmoid(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return square(v[0]); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return clamp(v[0], -0.5, 0.5); }, {x}));
}

TEST(GradElementwise, NonContiguousInputs) {
  // A transposed leaf and a strided slice of a leaf: gradients land in the right elements.
  Tensor base = rand_f64({4, 6}, false);
  Tensor t = base.t().detach().set_requires_grad();  // a non-contiguous leaf
  ASSERT_FALSE(t.is_contiguous());
  Tensor w = rand_f64({6, 4});
  EXPECT_TRUE(grad_ok([](const V& v) { return exp(v[0]) * v[1]; }, {t, w}));
  Tensor s = rand_f64({6, 8});
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].slice(1, 1, 8, 2) * v[0].slice(0, 0, 6).slice(1, 0, 4); }, {s}));
}

TEST(GradElementwise, WhereMaskedFillAndCast) {
  Tensor a = rand_f64({3, 4}), b = rand_f64({4});
  Tensor cond = gt(rand_f64({3, 4}, false), Tensor::scalar(0.0, DType::f64));
  EXPECT_TRUE(grad_ok([cond](const V& v) { return where(cond, v[0], v[1]); }, {a, b}));
  EXPECT_TRUE(grad_ok([cond](const V& v) { return masked_fill(v[0], cond, -3.0); }, {a}));
  EXPECT_TRUE(grad_ok([](const V& v) { return cast(cast(v[0], DType::f32), DType::f64) * 2.0; }, {a},
                      GradcheckOptions{1e-3, 1e-4, 1e-3}));
}

TEST(GradReduce, SumMeanMaxVar) {
  Tensor x = rand_f64({3, 4, 5});
  for (std::vector<int64_t> dims : {std::vector<int64_t>{}, {0}, {1}, {-1}, {0, 2}}) {
    for (bool keep : {false, true}) {
      EXPECT_TRUE(grad_ok([dims, keep](const V& v) { return sum(v[0], dims, keep); }, {x}));
      EXPECT_TRUE(grad_ok([dims, keep](const V& v) { return mean(v[0], dims, keep); }, {x}));
      EXPECT_TRUE(grad_ok([dims, keep](const V& v) { return amax(v[0], dims, keep); }, {x}));
      EXPECT_TRUE(grad_ok([dims, keep](const V& v) { return amin(v[0], dims, keep); }, {x}));
      EXPECT_TRUE(grad_ok([dims, keep](const V& v) { return var(v[0], dims, 1, keep); }, {x}));
    }
  }
  // Non-contiguous input through the general reduction path.
  EXPECT_TRUE(grad_ok([](const V& v) { return sum(v[0].permute({2, 0, 1}), {0, 2}); }, {x}));
}

// f16 var over more elements than f16's largest value: worked in f32, so neither the sum of
// squares nor the divisor overflows; the gradient reaches the f16 input through the casts.
TEST(GradReduce, HalfVarOverManyElements) {
  manual_seed(11);
  for (DType dt : {DType::f16, DType::bf16}) {
    Tensor x = (Tensor::randn({100000}) * 2.0).to(dt).set_requires_grad(true);
    Tensor v = var(x, {}, 1, false);
    EXPECT_EQ(v.dtype(), dt);
    const double ref = var(x.detach().to(DType::f64), {}, 1, false).item<double>();
    EXPECT_NEAR(v.item<double>(), ref, 0.01 * ref) << dtype_name(dt);
    v.backward();
    // d var / dx_i = 2 (x_i - mean) / (n - 1): check one element.
    const double mean_x = x.detach().to(DType::f64).mean().item<double>();
    const double x0 = x.detach().to(DType::f64).reshape({-1}).slice(0, 0, 1).item<double>();
    const double g0 = x.grad().to(DType::f64).reshape({-1}).slice(0, 0, 1).item<double>();
    EXPECT_NEAR(g0, 2 * (x0 - mean_x) / 99999.0, 0.02 * std::abs(2 * (x0 - mean_x) / 99999.0) + 1e-7) << dtype_name(dt);
  }
}

TEST(GradView, ReshapePermuteSliceExpandCatSplit) {
  Tensor x = rand_f64({2, 3, 4});
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].reshape({6, 4}) * 1.0; }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].transpose(0, 2).reshape({-1}) * 1.0; }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].permute({1, 2, 0}).contiguous(); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].slice(2, 1, 4, 2).select(0, 1); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].slice(1, 0, 1).expand({2, 5, 4}); }, {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].unsqueeze(1).squeeze(1).flatten(1); }, {x}));
  Tensor y = rand_f64({2, 2, 4});
  EXPECT_TRUE(grad_ok([](const V& v) { return cat({v[0], v[1]}, 1); }, {x, y}));
  EXPECT_TRUE(grad_ok([](const V& v) { return stack({v[0], v[0] * 2.0}, 3); }, {x}));
  EXPECT_TRUE(grad_ok(
      [](const V& v) {
        auto p = split(v[0], 3, 2);
        return p[0] * 2.0 + cat({p[1], p[1], p[1]}, 2);
      },
      {x}));
  EXPECT_TRUE(grad_ok([](const V& v) { return v[0].clone() * v[0]; }, {x}));
}

TEST(GradView, ErrorsNameShapes) {
  Tensor x = rand_f64({2, 3});
  EXPECT_THROW_WITH(cat({x, rand_f64({3, 3})}, 1), ShapeError, "(3, 3)");
  EXPECT_THROW_WITH(x.expand({4, 3, 2}), ShapeError, "cannot expand (2, 3)");
  EXPECT_THROW_WITH(x.permute({0, 0}), ValueError, "repeated");
  EXPECT_THROW_WITH(split(x, std::vector<int64_t>{1, 1}, 1), ShapeError, "add up to 2");
}

}  // namespace
}  // namespace headroom

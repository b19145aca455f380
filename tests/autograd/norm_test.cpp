// Tensor::norm / norm(): hand-computed p-norms over all elements and over dims, gradcheck for
// each p, the zero-norm gradient (0, not NaN), dtypes and the errors.
#include <cmath>
#include <limits>

#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using testing::rand_f64;

constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor f64(std::initializer_list<double> v, const Shape& shape) { return Tensor::from_vector(v, shape, DType::f64); }

TEST(Norm, HandComputedValues) {
  Tensor x = f64({3, -4, 0, 0, 1, -2}, {3, 2});  // rows (3, -4), (0, 0), (1, -2)
  EXPECT_DOUBLE_EQ(x.norm().item<double>(), std::sqrt(9.0 + 16 + 1 + 4));
  EXPECT_DOUBLE_EQ(x.norm(1).item<double>(), 10.0);
  EXPECT_DOUBLE_EQ(x.norm(kInf).item<double>(), 4.0);
  EXPECT_DOUBLE_EQ(x.norm(-kInf).item<double>(), 0.0);
  EXPECT_NEAR(x.norm(3).item<double>(), std::cbrt(27.0 + 64 + 1 + 8), 1e-12);
  EXPECT_EQ(x.norm().dim(), 0);
  // Over a dim, with and without keepdim.
  EXPECT_TRUE(all_close(x.norm(2, {1}), f64({5, 0, std::sqrt(5.0)}, {3})));
  EXPECT_TRUE(all_close(x.norm(2, {-1}, true), f64({5, 0, std::sqrt(5.0)}, {3, 1})));
  EXPECT_TRUE(all_close(x.norm(1, {0}), f64({4, 6}, {2})));
  EXPECT_TRUE(all_close(x.norm(kInf, {0}, true), f64({3, 4}, {1, 2})));
  EXPECT_TRUE(all_close(x.norm(-kInf, {1}), f64({3, 0, 1}, {3})));
  EXPECT_TRUE(all_close(norm(x, 2, {0, 1}), x.norm()));
  // f32 agrees with f64.
  EXPECT_NEAR(x.to(DType::f32).norm().item<double>(), std::sqrt(30.0), 1e-6);
  EXPECT_EQ(x.to(DType::f32).norm(2, {1}).dtype(), DType::f32);
  // 16-bit: summed in f32 (300 squares of 100 are 3e6, past f16's 65504), result in bf16/f16.
  Tensor h = Tensor::full({300}, 100.0, DType::f16);
  EXPECT_EQ(h.norm().dtype(), DType::f16);
  EXPECT_NEAR(h.norm().item<double>(), 100.0 * std::sqrt(300.0), 2.0);
}

TEST(Norm, GradientsPassGradcheck) {
  manual_seed(11);
  Tensor x = rand_f64({3, 4});
  for (double p : {2.0, 1.0, 3.0, 0.5, kInf, -kInf}) {
    SCOPED_TRACE(p);
    EXPECT_TRUE(grad_ok([p](const std::vector<Tensor>& in) { return in[0].norm(p); }, {x}));
    EXPECT_TRUE(grad_ok([p](const std::vector<Tensor>& in) { return in[0].norm(p, {1}); }, {x}));
    EXPECT_TRUE(grad_ok([p](const std::vector<Tensor>& in) { return in[0].norm(p, {0}, true); }, {x}));
  }
}

TEST(Norm, ZeroNormHasZeroGradient) {
  Tensor x = f64({3, -4, 0, 0}, {2, 2}).set_requires_grad(true);
  x.norm(2, {1}).sum().backward();
  EXPECT_TRUE(all_close(x.grad(), f64({0.6, -0.8, 0, 0}, {2, 2})));
  Tensor z = Tensor::zeros({3}, DType::f64).set_requires_grad(true);
  z.norm(3).backward();
  EXPECT_EQ(z.grad().to_vector<double>(), (std::vector<double>{0, 0, 0}));
}

TEST(Norm, Errors) {
  Tensor x = Tensor::ones({2, 3});
  EXPECT_THROW_WITH(x.norm(0), ValueError, "norm: p must be > 0, inf or -inf, got 0");
  EXPECT_THROW_WITH(x.norm(-1), ValueError, "got -1");
  EXPECT_THROW_WITH(x.norm(std::nan("")), ValueError, "norm: p must be");
  EXPECT_THROW_WITH(x.norm(2, {2}), ValueError, "norm: dim 2 is out of range");
  EXPECT_THROW_WITH(x.norm(2, {1, -1}), ValueError, "norm: a dim appears twice");
  EXPECT_THROW_WITH(Tensor::ones({3}, DType::i64).norm(), DTypeError, "norm: expected a floating tensor");
}

}  // namespace
}  // namespace headroom

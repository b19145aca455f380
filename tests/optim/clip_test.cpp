// clip_grad_norm_: the norm over all grads, the scaling, skipped parameters, reduced-precision
// grads summed in f32, and non-finite norms.
#include <cmath>

#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

Tensor param_with_grad(std::vector<double> grad, const Shape& shape, DType dtype = DType::f32) {
  Tensor p = Tensor::zeros(shape, TensorOptions().dtype(dtype).requires_grad(true));
  p.set_grad(Tensor::from_vector(grad, shape, dtype));
  return p;
}

TEST(ClipGradNorm, ScalesAllGradsByOneFactor) {
  // sqrt(3^2 + 4^2 + 12^2) = 13.
  Tensor a = param_with_grad({3, 4}, {2}), b = param_with_grad({12}, {1, 1}, DType::f64);
  Tensor none = Tensor::zeros({5}, TensorOptions().requires_grad(true));  // no grad: skipped
  EXPECT_NEAR(optim::grad_norm({a, b, none}), 13.0, 1e-6);
  EXPECT_NEAR(optim::clip_grad_norm_({a, b, none}, 20.0), 13.0, 1e-6);
  EXPECT_TRUE(all_close(a.grad(), Tensor::from_vector({3, 4}, {2})));  // below max: untouched
  EXPECT_NEAR(optim::clip_grad_norm_({a, b, none}, 6.5), 13.0, 1e-6);  // returns the norm before
  const double f = 6.5 / (13.0 + 1e-6);
  EXPECT_TRUE(all_close(a.grad(), Tensor::from_vector({3 * f, 4 * f}, {2})));
  EXPECT_TRUE(all_close(b.grad(), Tensor::from_vector({12 * f}, {1, 1}, DType::f64)));
  EXPECT_NEAR(optim::grad_norm({a, b}), 6.5, 1e-5);
  EXPECT_FALSE(none.grad().defined());
}

TEST(ClipGradNorm, HalfPrecisionGradsSumInF32) {
  // 1000 elements of 300: the sum of squares (9e7) overflows f16 (max 65504) but not f32.
  Tensor p = param_with_grad(std::vector<double>(1000, 300.0), {1000}, DType::f16);
  Tensor q = param_with_grad(std::vector<double>(1000, 300.0), {10, 100}, DType::bf16);
  const double expected = 300.0 * std::sqrt(2000.0);
  EXPECT_NEAR(optim::clip_grad_norm_({p, q}, 1.0), expected, expected * 1e-5);
  EXPECT_NEAR(p.grad().to_vector<double>()[7], 300.0 / expected, 1e-3 * 300.0 / expected);
  EXPECT_EQ(p.grad().dtype(), DType::f16);
}

TEST(ClipGradNorm, NonFiniteNormLeavesGradsAlone) {
  Tensor a = param_with_grad({1, INFINITY}, {2}), b = param_with_grad({2}, {1});
  EXPECT_TRUE(std::isinf(optim::clip_grad_norm_({a, b}, 1.0)));
  EXPECT_EQ(b.grad().to_vector<float>()[0], 2.0f);
  Tensor c = param_with_grad({NAN}, {1});
  EXPECT_TRUE(std::isnan(optim::clip_grad_norm_({c, b}, 1.0)));
  EXPECT_EQ(b.grad().to_vector<float>()[0], 2.0f);
  EXPECT_THROW_WITH(optim::clip_grad_norm_({b}, -1.0), ValueError, "max_norm must be >= 0");
}

}  // namespace
}  // namespace headroom

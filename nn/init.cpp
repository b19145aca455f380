// Initialisers: a draw from the global generator in f32 (f64 for f64 tensors) on the tensor's
// device, an affine map, and one copy_ into the tensor (which casts and honours strides).
#include "nn/init.h"

#include <cmath>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"

namespace headroom::nn::init {

namespace {
TensorOptions draw_options(const Tensor& t, const char* op) {
  HR_CHECK(t.defined(), ValueError, op, ": undefined tensor");
  HR_CHECK(is_floating(t.dtype()), DTypeError, op, ": expected a floating tensor, got ", describe(t));
  return TensorOptions().dtype(t.dtype() == DType::f64 ? DType::f64 : DType::f32).device(t.device());
}
Tensor write(const Tensor& t, const Tensor& values) {
  NoGradGuard no_grad;
  Tensor dst = t;
  dst.copy_(values);
  return t;
}
double fan(const Tensor& t, FanMode mode) {
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  return static_cast<double>(mode == FanMode::fan_in ? fan_in : fan_out);
}
}  // namespace

double calculate_gain(Nonlinearity nonlinearity, double param) {
  switch (nonlinearity) {
    case Nonlinearity::linear:
    case Nonlinearity::conv:
    case Nonlinearity::sigmoid: return 1.0;
    case Nonlinearity::tanh: return 5.0 / 3.0;
    case Nonlinearity::relu: return std::sqrt(2.0);
    case Nonlinearity::leaky_relu: return std::sqrt(2.0 / (1.0 + param * param));
    case Nonlinearity::selu: return 0.75;
  }
  throw ValueError("calculate_gain: invalid nonlinearity");
}

std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t) {
  HR_CHECK(t.defined() && t.dim() >= 2, ShapeError,
           "calculate_fan_in_and_fan_out: needs a tensor with at least 2 dims, got ",
           t.defined() ? shape_str(t.shape()) : std::string("an undefined tensor"));
  int64_t receptive = 1;
  for (int64_t d = 2; d < t.dim(); ++d) receptive *= t.size(d);
  return {t.size(1) * receptive, t.size(0) * receptive};
}

Tensor uniform_(const Tensor& t, double a, double b) {
  TensorOptions opts = draw_options(t, "uniform_");
  HR_CHECK(a <= b, ValueError, "uniform_: lower bound ", a, " exceeds upper bound ", b);
  NoGradGuard no_grad;
  CategoryScope scope(MemoryCategory::temporary);  // the draw is scratch, even inside a layer's parameter scope
  return write(t, Tensor::rand(t.shape(), opts) * (b - a) + a);
}

Tensor normal_(const Tensor& t, double mean, double std) {
  TensorOptions opts = draw_options(t, "normal_");
  HR_CHECK(std >= 0, ValueError, "normal_: std must be >= 0, got ", std);
  NoGradGuard no_grad;
  CategoryScope scope(MemoryCategory::temporary);
  return write(t, Tensor::randn(t.shape(), opts) * std + mean);
}

Tensor constant_(const Tensor& t, double value) {
  HR_CHECK(t.defined(), ValueError, "constant_: undefined tensor");
  NoGradGuard no_grad;
  Tensor dst = t;
  dst.fill_(value);
  return t;
}

Tensor zeros_(const Tensor& t) { return constant_(t, 0.0); }
Tensor ones_(const Tensor& t) { return constant_(t, 1.0); }

Tensor xavier_uniform_(const Tensor& t, double gain) {
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  const double a = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  return uniform_(t, -a, a);
}

Tensor xavier_normal_(const Tensor& t, double gain) {
  auto [fan_in, fan_out] = calculate_fan_in_and_fan_out(t);
  return normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)));
}

Tensor kaiming_uniform_(const Tensor& t, double a, FanMode mode, Nonlinearity nonlinearity) {
  const double f = fan(t, mode);
  HR_CHECK(f > 0, ShapeError, "kaiming_uniform_: zero fan for shape ", shape_str(t.shape()));
  const double bound = std::sqrt(3.0) * calculate_gain(nonlinearity, a) / std::sqrt(f);
  return uniform_(t, -bound, bound);
}

Tensor kaiming_normal_(const Tensor& t, double a, FanMode mode, Nonlinearity nonlinearity) {
  const double f = fan(t, mode);
  HR_CHECK(f > 0, ShapeError, "kaiming_normal_: zero fan for shape ", shape_str(t.shape()));
  return normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(f));
}

}  // namespace headroom::nn::init

// Parameter initialisation, in place, with PyTorch's formulas (torch.nn.init).
//
// Every random draw comes from the global Philox generator (Tensor::rand / randn), so
// manual_seed(s) before building a model gives the same weights on every run and on every
// device. Values are drawn in f32 (f64 for an f64 tensor) and cast to the tensor's dtype, so
// f16 and bf16 tensors get correctly rounded samples. Each function works under NoGradGuard
// on the tensor's storage (any device, any strides) and returns the tensor.
//
//   nn::init::kaiming_normal_(conv->weight, 0, nn::init::FanMode::fan_out, nn::init::Nonlinearity::relu);
//   nn::init::zeros_(conv->bias);
#pragma once

#include <cstdint>
#include <utility>

#include "engine/tensor.h"

namespace headroom::nn::init {

enum class FanMode { fan_in, fan_out };
enum class Nonlinearity { linear, conv, sigmoid, tanh, relu, leaky_relu, selu };

// The recommended gain for a nonlinearity: 1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2)
// for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (slope = param), 3/4 for selu.
double calculate_gain(Nonlinearity nonlinearity, double param = 0.01);
// fan_in = size(1) * receptive field, fan_out = size(0) * receptive field, where the receptive
// field is the product of the dims after the first two. Needs at least 2 dims.
std::pair<int64_t, int64_t> calculate_fan_in_and_fan_out(const Tensor& t);

Tensor uniform_(const Tensor& t, double a = 0.0, double b = 1.0);  // U(a, b)
Tensor normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
Tensor constant_(const Tensor& t, double value);
Tensor zeros_(const Tensor& t);
Tensor ones_(const Tensor& t);
// Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)); N(0, gain^2 * 2 / (fan_in + fan_out)).
Tensor xavier_uniform_(const Tensor& t, double gain = 1.0);
Tensor xavier_normal_(const Tensor& t, double gain = 1.0);
// He: std = gain / sqrt(fan) with gain = calculate_gain(nonlinearity, a); the uniform form
// draws U(-sqrt(3) std, sqrt(3) std). With a = sqrt(5) and leaky_relu (the defaults here, as
// in PyTorch) the uniform bound is 1 / sqrt(fan_in): PyTorch's default for Linear and Conv.
Tensor kaiming_uniform_(const Tensor& t, double a = 2.23606797749979, FanMode mode = FanMode::fan_in,
                        Nonlinearity nonlinearity = Nonlinearity::leaky_relu);
Tensor kaiming_normal_(const Tensor& t, double a = 0.0, FanMode mode = FanMode::fan_in,
                       Nonlinearity nonlinearity = Nonlinearity::leaky_relu);

}  // namespace headroom::nn::init

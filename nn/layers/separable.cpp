// DepthwiseSeparableConv2d: two Conv2d layers (the depthwise one with groups == in_channels), each
// followed by BatchNorm2d and ReLU; the children are named so state dicts read like PyTorch's
// MobileNet blocks ("depthwise.weight", "depthwise_bn.running_mean", "pointwise.weight").
#include "nn/layers/separable.h"

#include "autograd/functions.h"

namespace headroom::nn {

DepthwiseSeparableConv2d::DepthwiseSeparableConv2d(int64_t in, int64_t out, int64_t s, int64_t k, bool batch_norm)
    : in_channels(in), out_channels(out), stride(s), kernel(k) {
  HR_CHECK(in > 0 && out > 0 && s > 0 && k > 0, ValueError, "DepthwiseSeparableConv2d: invalid arguments in=", in,
           ", out=", out, ", stride=", s, ", kernel=", k);
  HR_CHECK(k % 2 == 1, ValueError,
           "DepthwiseSeparableConv2d: kernel must be odd (padding kernel/2 keeps the size), got ", k);
  depthwise = register_module("depthwise", std::make_shared<Conv2d>(in, in, k, s, k / 2, /*groups=*/in,
                                                                    /*bias=*/!batch_norm));
  if (batch_norm) depthwise_bn = register_module("depthwise_bn", std::make_shared<BatchNorm2d>(in));
  pointwise =
      register_module("pointwise", std::make_shared<Conv2d>(in, out, 1, 1, 0, /*groups=*/1, /*bias=*/!batch_norm));
  if (batch_norm) pointwise_bn = register_module("pointwise_bn", std::make_shared<BatchNorm2d>(out));
}

int64_t DepthwiseSeparableConv2d::parameter_count(int64_t in, int64_t out, int64_t k, bool batch_norm) {
  return in * k * k + in * out + (batch_norm ? 2 * (in + out) : in + out);
}

Tensor DepthwiseSeparableConv2d::forward(const Tensor& x) {
  HR_CHECK(x.dim() == 4 && x.size(1) == in_channels, ShapeError, name(), ": expected input [N, ", in_channels,
           ", H, W], got ", shape_str(x.shape()));
  Tensor y = depthwise->forward(x);
  if (depthwise_bn) y = depthwise_bn->forward(y);
  y = pointwise->forward(relu(y));
  if (pointwise_bn) y = pointwise_bn->forward(y);
  return relu(y);
}

std::string DepthwiseSeparableConv2d::name() const {
  std::string s = str_cat("DepthwiseSeparableConv2d(", in_channels, ", ", out_channels);
  if (stride != 1) s += str_cat(", stride=", stride);
  if (kernel != 3) s += str_cat(", kernel=", kernel);
  if (!depthwise_bn) s += ", batch_norm=false";
  return s + ")";
}

}  // namespace headroom::nn

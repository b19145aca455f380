// Conv2d: checks the channel/group arithmetic up front (the message names the layer), then the
// functional op does the work.
#include "nn/layers/conv.h"

#include <cmath>

#include "autograd/functions.h"
#include "engine/memory.h"
#include "nn/init.h"

namespace headroom::nn {

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t g, bool with_bias,
               LayerOptions options)
    : in_channels(in), out_channels(out), kernel(k), stride(s), padding(p), groups(g) {
  HR_CHECK(in > 0 && out > 0 && k > 0 && s > 0 && p >= 0 && g > 0, ValueError, "Conv2d: invalid arguments in=", in,
           ", out=", out, ", kernel=", k, ", stride=", s, ", padding=", p, ", groups=", g);
  HR_CHECK(in % g == 0 && out % g == 0, ValueError, "Conv2d: in_channels ", in, " and out_channels ", out,
           " must both be divisible by groups ", g);
  const TensorOptions opts = options.tensor_options("Conv2d");
  CategoryScope scope(MemoryCategory::parameter);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in / g * k * k));
  weight = Tensor::empty({out, in / g, k, k}, opts);
  init::uniform_(weight, -bound, bound);
  register_parameter("weight", &weight);
  if (with_bias) {
    bias = Tensor::empty({out}, opts);
    init::uniform_(bias, -bound, bound);
    register_parameter("bias", &bias);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  HR_CHECK(x.dim() == 4 && x.size(1) == in_channels, ShapeError, name(), ": expected input [N, ", in_channels,
           ", H, W], got ", shape_str(x.shape()));
  return conv2d(x, weight, bias, stride, padding, groups);
}

std::string Conv2d::name() const {
  std::string s = str_cat("Conv2d(", in_channels, ", ", out_channels, ", kernel=", kernel);
  if (stride != 1) s += str_cat(", stride=", stride);
  if (padding != 0) s += str_cat(", padding=", padding);
  if (groups != 1) s += str_cat(", groups=", groups);
  if (!bias.defined()) s += ", bias=false";
  return s + ")";
}

}  // namespace headroom::nn

// Linear: parameters made in MemoryCategory::parameter, forward is the functional op.
#include "nn/layers/linear.h"

#include <cmath>

#include "autograd/functions.h"
#include "engine/memory.h"
#include "nn/init.h"

namespace headroom::nn {

Linear::Linear(int64_t in, int64_t out, bool with_bias, LayerOptions options) : in_features(in), out_features(out) {
  HR_CHECK(in > 0 && out > 0, ValueError, "Linear: feature counts must be positive, got in=", in, ", out=", out);
  const TensorOptions opts = options.tensor_options("Linear");
  CategoryScope scope(MemoryCategory::parameter);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = Tensor::empty({out, in}, opts);
  init::uniform_(weight, -bound, bound);
  register_parameter("weight", &weight);
  if (with_bias) {
    bias = Tensor::empty({out}, opts);
    init::uniform_(bias, -bound, bound);
    register_parameter("bias", &bias);
  }
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

std::string Linear::name() const {
  return str_cat("Linear(", in_features, ", ", out_features, bias.defined() ? ")" : ", bias=false)");
}

}  // namespace headroom::nn

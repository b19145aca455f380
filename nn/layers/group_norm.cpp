// GroupNorm: the module and the free function over the fused autograd op (the reasoning is in
// group_norm.h; the argument checks live with the op in autograd/functions/nn_ops.cpp).
#include "nn/layers/group_norm.h"

#include "autograd/functions.h"
#include "engine/memory.h"

namespace headroom::nn {

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps) {
  return ::headroom::group_norm(x, groups, weight, bias, eps);  // the checks are there
}

GroupNorm::GroupNorm(int64_t g, int64_t c, double eps_in, bool affine, LayerOptions options)
    : groups(g), channels(c), eps(eps_in) {
  HR_CHECK(g > 0 && c > 0 && c % g == 0, ValueError, "GroupNorm: channels (", c,
           ") must be a positive multiple of groups (", g, ")");
  HR_CHECK(eps > 0, ValueError, "GroupNorm: eps must be positive, got ", eps);
  const TensorOptions opts = options.tensor_options("GroupNorm");
  if (!affine) return;
  CategoryScope scope(MemoryCategory::parameter);
  weight = Tensor::ones({c}, opts);
  bias = Tensor::zeros({c}, opts);
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}

Tensor GroupNorm::forward(const Tensor& x) {
  HR_CHECK(x.dim() >= 2 && x.size(1) == channels, ShapeError, name(), ": expected input [N, ", channels, ", *], got ",
           shape_str(x.shape()));
  return nn::group_norm(x, groups, weight, bias, eps);
}

std::string GroupNorm::name() const { return str_cat("GroupNorm(", groups, ", ", channels, ")"); }

}  // namespace headroom::nn

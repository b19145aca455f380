// GroupNorm: shape checks that name the op, then reshape + layer_norm + a per-channel affine
// (the layout reasoning is in group_norm.h).
#include "nn/layers/group_norm.h"

#include "autograd/functions.h"
#include "engine/memory.h"

namespace headroom::nn {

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps) {
  HR_CHECK(x.defined() && x.dim() >= 2, ShapeError, "group_norm: expected input [N, C, *], got ",
           x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  const int64_t n = x.size(0), c = x.size(1);
  HR_CHECK(groups > 0 && c % groups == 0, ValueError, "group_norm: ", c, " channels of input ", shape_str(x.shape()),
           " cannot be split into ", groups, " groups");
  HR_CHECK(eps >= 0, ValueError, "group_norm: eps must be non-negative, got ", eps);
  for (const auto& [p, what] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!p->defined()) continue;
    HR_CHECK(p->dim() == 1 && p->size(0) == c, ShapeError, "group_norm: ", what, " has shape ",
             shape_str(p->shape()), ", expected ", shape_str(Shape{c}), " for input ", shape_str(x.shape()));
    HR_CHECK(p->dtype() == x.dtype(), DTypeError, "group_norm: ", what, " is ", dtype_name(p->dtype()),
             " but the input is ", dtype_name(x.dtype()));
  }
  if (x.numel() == 0) return x * 1.0;
  const int64_t per_group = x.numel() / (n * groups);
  Tensor y = reshape(layer_norm(reshape(x, {n, groups, per_group}), {per_group}, Tensor(), Tensor(), eps), x.shape());
  if (!weight.defined() && !bias.defined()) return y;
  Shape channel_shape(static_cast<size_t>(x.dim()), 1);
  channel_shape[1] = c;
  if (weight.defined()) y = y * reshape(weight, channel_shape);
  if (bias.defined()) y = y + reshape(bias, channel_shape);
  return y;
}

GroupNorm::GroupNorm(int64_t g, int64_t c, double eps_in, bool affine) : groups(g), channels(c), eps(eps_in) {
  HR_CHECK(g > 0 && c > 0 && c % g == 0, ValueError, "GroupNorm: channels (", c,
           ") must be a positive multiple of groups (", g, ")");
  HR_CHECK(eps > 0, ValueError, "GroupNorm: eps must be positive, got ", eps);
  if (!affine) return;
  CategoryScope scope(MemoryCategory::parameter);
  weight = Tensor::ones({c});
  bias = Tensor::zeros({c});
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}

Tensor GroupNorm::forward(const Tensor& x) {
  HR_CHECK(x.dim() >= 2 && x.size(1) == channels, ShapeError, name(), ": expected input [N, ", channels,
           ", *], got ", shape_str(x.shape()));
  return group_norm(x, groups, weight, bias, eps);
}

std::string GroupNorm::name() const { return str_cat("GroupNorm(", groups, ", ", channels, ")"); }

}  // namespace headroom::nn

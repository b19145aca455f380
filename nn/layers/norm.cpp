// BatchNorm2d and LayerNorm: shape checks that name the layer, then the functional ops.
#include "nn/layers/norm.h"

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"

namespace headroom::nn {

BatchNorm2d::BatchNorm2d(int64_t c, double eps_in, double momentum_in, LayerOptions options)
    : channels(c), eps(eps_in), momentum(momentum_in) {
  HR_CHECK(c > 0, ValueError, "BatchNorm2d: channels must be positive, got ", c);
  HR_CHECK(eps > 0, ValueError, "BatchNorm2d: eps must be positive, got ", eps);
  HR_CHECK(momentum >= 0 && momentum <= 1, ValueError, "BatchNorm2d: momentum must be in [0, 1], got ", momentum);
  const TensorOptions opts = options.tensor_options("BatchNorm2d");
  CategoryScope scope(MemoryCategory::parameter);
  weight = Tensor::ones({c}, opts);
  bias = Tensor::zeros({c}, opts);
  running_mean = Tensor::zeros({c}, opts);
  running_var = Tensor::ones({c}, opts);
  num_batches_tracked = Tensor::zeros({}, TensorOptions().dtype(DType::i64).device(options.device));
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
  register_buffer("running_mean", &running_mean);
  register_buffer("running_var", &running_var);
  register_buffer("num_batches_tracked", &num_batches_tracked);
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  HR_CHECK(x.dim() == 4 && x.size(1) == channels, ShapeError, name(), ": expected input [N, ", channels,
           ", H, W], got ", shape_str(x.shape()));
  if (is_training() && !is_recomputing()) {  // counted once per forward (Note [recompute state])
    NoGradGuard no_grad;
    num_batches_tracked.add_(Tensor::scalar(1, num_batches_tracked.options()));
  }
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

std::string BatchNorm2d::name() const { return str_cat("BatchNorm2d(", channels, ")"); }

LayerNorm::LayerNorm(Shape shape, double eps_in, LayerOptions options)
    : normalized_shape(std::move(shape)), eps(eps_in) {
  HR_CHECK(!normalized_shape.empty(), ValueError, "LayerNorm: normalized_shape must have at least one dim");
  for (int64_t d : normalized_shape)
    HR_CHECK(d > 0, ValueError, "LayerNorm: invalid normalized_shape ", shape_str(normalized_shape));
  HR_CHECK(eps > 0, ValueError, "LayerNorm: eps must be positive, got ", eps);
  const TensorOptions opts = options.tensor_options("LayerNorm");
  CategoryScope scope(MemoryCategory::parameter);
  weight = Tensor::ones(normalized_shape, opts);
  bias = Tensor::zeros(normalized_shape, opts);
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}

Tensor LayerNorm::forward(const Tensor& x) {
  const auto n = static_cast<int64_t>(normalized_shape.size());
  bool ok = x.dim() >= n;
  for (int64_t i = 0; ok && i < n; ++i) ok = x.size(x.dim() - n + i) == normalized_shape[static_cast<size_t>(i)];
  HR_CHECK(ok, ShapeError, name(), ": input of shape ", shape_str(x.shape()), " does not end in ",
           shape_str(normalized_shape));
  return layer_norm(x, normalized_shape, weight, bias, eps);
}

std::string LayerNorm::name() const { return str_cat("LayerNorm(", shape_str(normalized_shape), ")"); }

}  // namespace headroom::nn

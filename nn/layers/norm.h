// Normalisation layers.
//
// BatchNorm2d: per-channel statistics of an NCHW batch. In training it normalises with the
// batch's statistics and updates the running ones (momentum, unbiased variance) and counts
// num_batches_tracked; in eval it uses the running statistics. All three are buffers, so they
// are saved, loaded and moved with the model. Memory note: the statistics depend on the batch,
// so splitting a batch into micro-batches changes BatchNorm's result (docs/batch-splitting.md).
// LayerNorm: normalises over the trailing normalized_shape dims of each sample.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1, LayerOptions options = {});
  Tensor forward(const Tensor& x) override;  // x: [N, C, H, W]
  std::string name() const override;

  int64_t channels;
  double eps, momentum;
  Tensor weight, bias;               // parameters [C]: 1 and 0
  Tensor running_mean, running_var;  // buffers [C]: 0 and 1
  Tensor num_batches_tracked;        // buffer, i64 scalar
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, LayerOptions options = {});
  Tensor forward(const Tensor& x) override;  // x: [..., *normalized_shape]
  std::string name() const override;

  Shape normalized_shape;
  double eps;
  Tensor weight, bias;  // parameters of normalized_shape: 1 and 0
};

}  // namespace headroom::nn

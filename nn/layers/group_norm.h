// GroupNorm: normalisation over groups of channels within each sample (Wu and He, 2018).
//
// Its statistics are per sample -- the mean and variance of the C/G channels of a group over
// all positions of one sample -- so, unlike BatchNorm's, they do not depend on which other
// samples share the batch: a batch split into micro-batches (optim/batch_split.h) gives the same
// outputs and gradients as the whole batch. That is why it is offered as BatchNorm's replacement
// under batch splitting (docs/batch-splitting.md). groups = 1 normalises each sample over all
// its channels and positions; groups = C is instance normalisation.
//
// Built from existing differentiable ops (reshape to [N, G, C/G * spatial], layer_norm over the
// last dim without affine, reshape back, per-channel affine), so its gradient is theirs; a fused
// kernel can replace it when a benchmark says it pays.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

// x: [N, C, *] with C divisible by groups; weight and bias: [C] or undefined.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps = 1e-5);

class GroupNorm : public Module {
 public:
  GroupNorm(int64_t groups, int64_t channels, double eps = 1e-5, bool affine = true);
  Tensor forward(const Tensor& x) override;  // x: [N, C, *]
  std::string name() const override;

  int64_t groups, channels;
  double eps;
  Tensor weight, bias;  // parameters [C]: 1 and 0; undefined without affine
};

}  // namespace headroom::nn
